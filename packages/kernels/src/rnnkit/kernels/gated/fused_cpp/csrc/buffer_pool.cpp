// See buffer_pool.h.
#include "buffer_pool.h"

#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/accumulate.h>

#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <string>

namespace rnnkit_cpu {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;
constexpr size_t kAlign = 64;

// Default limit: RNNKIT_CPU_POOL_MB (MiB), else 1 GiB.
int64_t default_limit() {
  const char* env = std::getenv("RNNKIT_CPU_POOL_MB");
  if (env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long long mb = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && mb >= 0) return static_cast<int64_t>(mb) << 20;
  }
  return int64_t(1) << 30;
}

class Pool {
 public:
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(bytes);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    cached_ -= bytes;
    return p;
  }

  // Keeps a freed block if the limit allows, else frees it.
  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + bytes <= static_cast<size_t>(limit_)) {
        free_.emplace(bytes, p);
        cached_ += bytes;
        return;
      }
    }
    std::free(p);
  }

  void release() {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      cached_ = 0;
    }
    for (auto& kv : blocks) std::free(kv.second);
  }

  void set_limit(int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = bytes;
    }
    if (static_cast<size_t>(bytes) < cached()) release();
  }

  size_t cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

  int64_t limit() {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
  int64_t limit_ = default_limit();
};

// Never destroyed: tensors freed during interpreter shutdown still return their blocks here.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const int64_t numel = c10::multiply_integers(sizes);
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (bytes < kMinBytes || pool().limit() == 0 || !options.device().is_cpu())
    return at::empty(sizes, options);
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = pool().take(rounded);
  if (p == nullptr) {
    p = std::aligned_alloc(kAlign, rounded);
    TORCH_CHECK(p != nullptr, "rnnkit fused_cpp: out of memory allocating ", rounded, " bytes");
  }
  at::Tensor t = at::from_blob(
      p, sizes, [rounded](void* q) { pool().give(q, rounded); }, options);
  const auto& ctx = at::globalContext();
  if (ctx.deterministicAlgorithms() && ctx.deterministicFillUninitializedMemory() &&
      t.is_floating_point()) {
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return t;
}

int64_t pool_cached_bytes() { return static_cast<int64_t>(pool().cached()); }

int64_t pool_limit_bytes() { return pool().limit(); }

void pool_release() { pool().release(); }

void pool_set_limit(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "rnnkit fused_cpp: the pool limit must be >= 0 bytes, got ", bytes);
  pool().set_limit(bytes);
}

}  // namespace rnnkit_cpu
