// Output tensors of the CPU Hadamard ops, from a small cache of recently freed large buffers.
//
// Why: an out-of-place op pays for fresh output memory on every call, and for outputs of 2 MiB and
// more that means page faults. With THP_MEM_ALLOC_ENABLE=1, c10 allocates those with
// posix_memalign(2 MiB): glibc serves that from a new mmap every time (the aligned chunk it frees is
// smaller than the next request, so its dynamic mmap threshold never admits the request to the heap),
// and each 8 MB output costs ~500 page faults and 1.3–1.8 ms of kernel time on the 2-core EPYC, 4–5×
// the transform itself. Without THP, glibc reuses heap memory up to 32 MiB, and maps (and faults)
// anew above that. Measured: 516 faults per 8 MB call with THP_MEM_ALLOC_ENABLE=1, none without.
//
// What: buffers of ≥ kMinCachedBytes come from c10::alloc_cpu (so THP, alignment and NUMA placement are
// c10's) and, when their tensor dies, go back to a process-wide cache instead of free(): a later output
// of exactly the same byte size reuses one, already faulted in. The cache holds at most
// kMaxCachedBytes (least recently freed evicted first), like a much smaller CUDA caching allocator.
// Smaller outputs come from c10's CPU allocator as usual. Storage stays resizable (it has an allocator).
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstddef>
#include <cstring>
#include <deque>
#include <mutex>

namespace symkernels::hadamard {

class OutputCacheAllocator final : public c10::Allocator {
 public:
  static constexpr size_t kMinCachedBytes = size_t{2} << 20;
  static constexpr size_t kMaxCachedBytes = size_t{256} << 20;

  static OutputCacheAllocator* get() {
    static auto* instance = new OutputCacheAllocator();  // never destroyed: tensors may outlive statics
    return instance;
  }

  c10::DataPtr allocate(size_t nbytes) override {
    if (nbytes < kMinCachedBytes) return c10::GetCPUAllocator()->allocate(nbytes);
    void* data = take(nbytes);
    if (data == nullptr) data = c10::alloc_cpu(nbytes);
    auto* block = new Block{data, nbytes};
    return {data, block, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  struct Block {
    void* data;
    size_t bytes;
  };

  void* take(size_t nbytes) {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = free_.rbegin(); it != free_.rend(); ++it) {  // most recently freed first: warmest
      if (it->bytes == nbytes) {
        void* data = it->data;
        cached_bytes_ -= nbytes;
        free_.erase(std::next(it).base());
        return data;
      }
    }
    return nullptr;
  }

  static void release(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    const Block b = *block;
    delete block;
    get()->give_back(b);
  }

  void give_back(const Block& b) {
    std::deque<Block> evicted;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (b.bytes <= kMaxCachedBytes) {
        free_.push_back(b);
        cached_bytes_ += b.bytes;
      } else {
        evicted.push_back(b);
      }
      while (cached_bytes_ > kMaxCachedBytes) {
        evicted.push_back(free_.front());
        cached_bytes_ -= free_.front().bytes;
        free_.pop_front();
      }
    }
    for (const Block& e : evicted) c10::free_cpu(e.data);  // outside the lock
  }

  std::mutex mutex_;
  std::deque<Block> free_;  // least recently freed first
  size_t cached_bytes_ = 0;
};

// at::empty(sizes, like.options()) for a contiguous CPU output, from the cache above.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::Tensor& like) {
  return at::Tensor(at::detail::empty_generic(sizes, OutputCacheAllocator::get(),
                                              c10::DispatchKeySet(c10::DispatchKey::CPU), like.scalar_type(),
                                              c10::MemoryFormat::Contiguous));
}

}  // namespace symkernels::hadamard
