// Output buffers of the CPU kernels, reused across calls.
#pragma once

#include <torch/extension.h>

#include <ATen/EmptyTensor.h>

#include <atomic>
#include <cstdlib>
#include <list>
#include <mutex>
#include <utility>
#include <vector>

namespace cafusion {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

// A fresh 50 MB tensor costs about as much as a copy of it again in page faults and
// kernel zeroing (PyTorch's CPU allocator returns big blocks to the OS on free), which is as much as
// the pass that fills it. y and dx come back with the same sizes every training step, so the block
// keeps its freed output buffers in a bounded cache, as PyTorch's CUDA allocator does on the GPU.

class BufferCache {
 public:
  static BufferCache& get() {
    static BufferCache* cache = new BufferCache();  // never destroyed: tensors may be freed at exit
    return *cache;
  }

  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->first == bytes) {
          void* p = it->second;
          held_ -= bytes;
          free_.erase(it);
          return p;
        }
      }
    }
    void* p = nullptr;
    TORCH_CHECK(posix_memalign(&p, kAlign, bytes) == 0 && p != nullptr, "cafusion: out of memory allocating ",
                bytes, " bytes");
    return p;
  }

  void give(void* p, size_t bytes) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.emplace_front(bytes, p);  // most recent first; the oldest go when over the limit
      held_ += bytes;
      evict_locked(evicted);
    }
    for (void* q : evicted) std::free(q);
  }

  // Sets the limit (bytes; 0 turns the cache off) and frees what no longer fits; returns the bytes held.
  size_t set_limit(size_t bytes) {
    std::vector<void*> evicted;
    size_t held = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = bytes;
      evict_locked(evicted);
      held = held_;
    }
    for (void* q : evicted) std::free(q);
    return held;
  }
  size_t held() {
    std::lock_guard<std::mutex> lock(mu_);
    return held_;
  }
  size_t limit() const { return limit_; }

 private:
  static constexpr size_t kAlign = 64;
  void evict_locked(std::vector<void*>& evicted) {
    while (held_ > limit_) {
      held_ -= free_.back().first;
      evicted.push_back(free_.back().second);
      free_.pop_back();
    }
  }
  std::mutex mu_;
  std::list<std::pair<size_t, void*>> free_;
  size_t held_ = 0;
  std::atomic<size_t> limit_{size_t(1) << 30};
};

constexpr int64_t kCacheMin = int64_t(1) << 20;  // bytes; smaller outputs are cheap to allocate anyway

// BufferCache behind torch's Allocator interface: the kernels' outputs are ordinary CPU tensors
// (resizable, shareable, picklable) whose memory goes back to the cache when they are freed.
class CachedAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) return {nullptr, nullptr, &release, cpu};
    void* p = BufferCache::get().take(n);
    return {p, new Block{p, n}, &release, cpu};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  struct Block {
    void* p;
    size_t n;
  };
  static void release(void* ctx) {
    if (ctx == nullptr) return;
    const Block* b = static_cast<Block*>(ctx);
    BufferCache::get().give(b->p, b->n);
    delete b;
  }
};

// An uninitialised tensor with these sizes and strides, from the cache when it is big.
inline Tensor empty_cached(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options) {
  const auto dtype = c10::typeMetaToScalarType(options.dtype());
  const int64_t bytes = c10::multiply_integers(sizes) * static_cast<int64_t>(c10::elementSize(dtype));
  if (bytes < kCacheMin || static_cast<size_t>(bytes) > BufferCache::get().limit())
    return at::empty_strided(sizes, strides, options);
  static CachedAllocator allocator;
  return at::detail::empty_strided_generic(sizes, strides, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                           dtype);
}

// The output for a (B, C, *spatial) input: the input's strides when its (B, C, N) flattening is a view
// (contiguous and channels_last maps), else contiguous; so the kernels can always write through the
// output's (B, C, N) view. (A map with its spatial dims permuted is dense but does not flatten to a view;
// a sliced one is not dense.)
inline bool spatial_flattens(const Tensor& x) {  // (B, C, *spatial) -> (B, C, N) is a view
  int64_t expected = -1;
  for (int64_t d = x.dim() - 1; d >= 2; --d) {
    if (x.size(d) == 1) continue;
    if (expected != -1 && x.stride(d) != expected) return false;
    expected = x.stride(d) * x.size(d);
  }
  return true;
}

inline Tensor output_for(const Tensor& x) {
  const bool keep = x.is_non_overlapping_and_dense() && spatial_flattens(x);
  if (keep) return empty_cached(x.sizes(), x.strides(), x.options());
  return empty_cached(x.sizes(), c10::contiguous_strides(x.sizes()), x.options());
}

}  // namespace cafusion
