// The persistent kernels of gated_cuda.cu run on the CPU, for tests without a GPU.
//
// Compiled with -DRNNKIT_HOST_EMULATION together with gated_cuda_ops.cpp (which then registers
// the ops for CPU tensors), this file includes the kernel source itself and supplies what CUDA
// would: each block of a launch is one std::thread with ONE thread per block (blockDim.x == 1;
// every loop in the kernels is strided by blockDim.x, so one thread does a block's whole work),
// its dynamic shared memory a NaN-filled buffer of the size the launch asks for, and
// grid.sync() a std::barrier over all blocks. So the emulation checks the kernels' indexing,
// layouts, the split of work over blocks and the data exchanged between blocks at the barrier,
// the tensor-core products (the WMMA calls emulated below, the rounding of TF32, bfloat16 and
// float16 operands included, the 16-bit operands stored in 2 bytes as on a GPU: operand shapes,
// leading dimensions, the chunked accumulation, the split sums of warps sharing a tile (the
// one thread walks every warp's share), padded rows never read), and the whole
// path from the Python loops through the glue; it cannot check what needs a GPU:
// races between the threads of a block (a missing __syncthreads), memory coherence between SMs
// (__ldcg), occupancy, the cooperative launch, WMMA's alignment rules and lane layouts, or speed.
// (It does check that every 16-byte load of the staging reads a 16-byte aligned address.)
// The FLAGS step exchange runs for real between the blocks' threads (std::atomic acquire and
// release), and each block sleeps a random while before it publishes a step now and then, so
// that a block which reads before its wait says it may finds the step unwritten.
#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct EmulatedDim3 {
  unsigned x;
};
inline thread_local EmulatedDim3 threadIdx{0}, blockIdx{0}, blockDim{1};
inline std::barrier<>* emulated_grid_barrier = nullptr;
inline thread_local std::vector<float>* emulated_smem = nullptr;

struct float4 {
  float x, y, z, w;
};
struct uint4 {
  unsigned x, y, z, w;
};
inline void __syncthreads() {}
inline void __threadfence() {}
inline bool __all_sync(unsigned, bool predicate) { return predicate; }  // a warp of one lane
[[noreturn]] inline void __trap() {
  std::fflush(stdout);
  std::abort();
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
//! Set by a 16-byte load from an address that is not 16-byte aligned (a fault on a GPU, which
//! x86 would let pass); the launch then fails, saying so.
inline std::atomic<bool> emulated_misaligned{false};
template <class V>
inline V load16(const V* p) {
  if (reinterpret_cast<std::uintptr_t>(p) % 16) emulated_misaligned = true;
  return *p;
}
inline float4 __ldcg(const float4* p) { return load16(p); }
inline uint4 __ldcg(const uint4* p) { return load16(p); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// cuda_bf16.h / cuda_fp16.h: 2-byte types with round-to-nearest-even conversions.
struct __nv_bfloat16 {
  std::uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  if (std::isnan(x)) return {static_cast<std::uint16_t>((b >> 16) | 0x40u)};  // stays a NaN
  b += 0x7FFFu + ((b >> 16) & 1u);
  return {static_cast<std::uint16_t>(b >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 x) {
  const std::uint32_t b = static_cast<std::uint32_t>(x.bits) << 16;
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}
struct __half {
  _Float16 value;
};
inline __half __float2half_rn(float x) { return {static_cast<_Float16>(x)}; }
inline float __half2float(__half x) { return static_cast<float>(x.value); }
static_assert(sizeof(__nv_bfloat16) == 2 && sizeof(__half) == 2);

// The WMMA calls of the tensor-core product (TF32 m16n16k8, bfloat16 and float16 m16n16k16,
// row-major operands), for one
// emulated thread that stands for the whole warp: a fragment holds its whole operand, row-major,
// and `x` / `num_elements` cover all of it (on a GPU each lane holds a share), which is all the
// kernels rely on (they round every element of a fragment the same way).
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

template <class Use, int M, int N, int K>
struct operand_shape;
template <int M, int N, int K>
struct operand_shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct operand_shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct operand_shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = operand_shape<Use, M, N, K>::rows;
  static constexpr int cols = operand_shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  float x[rows * cols];
};

//! cvt.rna.tf32.f32: keep 10 mantissa bits, rounding to nearest with ties away from zero.
inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  std::uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits = (bits + 0x1000u) & 0xFFFFE000u;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

inline float value_of(float x) { return x; }
inline float value_of(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float value_of(__half x) { return __half2float(x); }

//! An operand fragment from memory of its own type (float for TF32, else the 16-bit type).
template <class Use, int M, int N, int K, class T>
void load_matrix_sync(fragment<Use, M, N, K, T, row_major>& f,
                      const std::conditional_t<std::is_same_v<T, precision::tf32>, float, T>* p,
                      unsigned ldm) {
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c) f.x[r * f.cols + c] = value_of(p[r * ldm + c]);
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm,
                      layout_t layout) {
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c)
      f.x[r * f.cols + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm,
                       layout_t layout) {
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c)
      (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * f.cols + c];
}

template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float>& f, float v) {
  for (float& e : f.x) e = v;
}

//! d = a b + c, float32 sums (d may be c).
template <int M, int N, int K, class T>
void mma_sync(fragment<accumulator, M, N, K, float>& d,
              const fragment<matrix_a, M, N, K, T, row_major>& a,
              const fragment<matrix_b, M, N, K, T, row_major>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float s = c.x[m * N + n];
      for (int k = 0; k < K; ++k) s += a.x[m * K + k] * b.x[k * N + n];
      out[m * N + n] = s;
    }
  for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}
}  // namespace wmma
}  // namespace nvcuda

namespace cooperative_groups {
struct grid_group {
  void sync() { emulated_grid_barrier->arrive_and_wait(); }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups

namespace rnnkit_cuda {
namespace {
inline float* dynamic_smem() { return emulated_smem->data(); }

// The FLAGS exchange's primitives. A poll yields its core: the blocks' threads outnumber the
// cores, and a spinning block would keep the one it waits for from running.
inline int flag_load_acquire(const int* p) {
  std::this_thread::yield();
  return std::atomic_ref<int>(*const_cast<int*>(p)).load(std::memory_order_acquire);
}

//! Publishes *p = v (release), half the time after sleeping up to 300 microseconds: the
//! block's later steps start late, as a slow SM's would.
inline void flag_store_release(int* p, int v) {
  thread_local std::minstd_rand rng(1 + blockIdx.x);
  if (rng() % 2) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
  std::atomic_ref<int>(*p).store(v, std::memory_order_release);
}

inline unsigned long long clock_ns() {
  return static_cast<unsigned long long>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                             std::chrono::steady_clock::now().time_since_epoch())
                                             .count());
}
}  // namespace
}  // namespace rnnkit_cuda

#include "gated_cuda.cu"

namespace rnnkit_cuda {

cudaStream_t current_stream(int) { return nullptr; }

namespace {

//! Floats past the end of each block's shared memory, checked after the launch: a kernel that
//! writes past what its launch asked for (wrong byte arithmetic) fails the call.
constexpr std::size_t kGuard = 16384;
constexpr std::uint32_t kGuardBits = 0x7FC0DEADu;  // a NaN no kernel writes

template <typename Args>
const char* run_blocks(void (*kernel)(Args, Tiling), const Args& args, const Tiling& tiling,
                       std::size_t smem_bytes) {
  const int blocks = tiling.blocks;
  if (blocks == 0 || args.N == 0) return nullptr;
  if (smem_bytes % sizeof(float)) return "shared memory not a whole number of floats";
  std::barrier<> grid(blocks);
  emulated_grid_barrier = &grid;
  emulated_misaligned = false;
  std::vector<std::thread> threads;
  std::vector<int> overran(blocks, 0);
  float guard;
  std::memcpy(&guard, &kGuardBits, sizeof guard);
  for (int b = 0; b < blocks; ++b) {
    threads.emplace_back([&, b] {
      blockIdx.x = static_cast<unsigned>(b);
      const std::size_t n = smem_bytes / sizeof(float);
      std::vector<float> smem(n + kGuard, std::numeric_limits<float>::quiet_NaN());
      std::fill(smem.begin() + static_cast<std::ptrdiff_t>(n), smem.end(), guard);
      emulated_smem = &smem;
      kernel(args, tiling);
      overran[b] = std::memcmp(smem.data() + n, std::vector<float>(kGuard, guard).data(),
                               kGuard * sizeof(float)) != 0;
    });
  }
  for (auto& t : threads) t.join();
  emulated_grid_barrier = nullptr;
  for (int o : overran)
    if (o) return "a block wrote past the shared memory its launch asked for";
  if (emulated_misaligned) return "a 16-byte load read from an address not 16-byte aligned";
  return nullptr;
}

}  // namespace

const char* launch_forward(const ForwardArgs& a, const Tiling& tl, cudaStream_t) {
  if (a.T == 0 || a.B == 0) return nullptr;
  const std::size_t smem = forward_smem_bytes(a.kind, a.D, tl);
  return with_kernel<ForwardKernel>(a.kind, tl.mma,
                                    [&](auto fn) { return run_blocks(fn, a, tl, smem); });
}

const char* launch_backward(const BackwardArgs& a, const Tiling& tl, cudaStream_t) {
  if (a.B == 0) return nullptr;
  const std::size_t smem = backward_smem_bytes(a.kind, a.D, tl);
  return with_kernel<BackwardKernel>(a.kind, tl.mma,
                                     [&](auto fn) { return run_blocks(fn, a, tl, smem); });
}

}  // namespace rnnkit_cuda
