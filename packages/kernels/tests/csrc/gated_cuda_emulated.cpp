// The persistent kernels of gated_cuda.cu run on the CPU, for tests without a GPU.
//
// Compiled with -DRNNKIT_HOST_EMULATION together with gated_cuda_ops.cpp (which then registers
// the ops for CPU tensors), this file includes the kernel source itself and supplies what CUDA
// would: each block of a launch is one std::thread with ONE thread per block (blockDim.x == 1;
// every loop in the kernels is strided by blockDim.x, so one thread does a block's whole work),
// its dynamic shared memory a NaN-filled buffer of the size the launch asks for, and
// grid.sync() a std::barrier over all blocks. So the emulation checks the kernels' indexing,
// layouts, the split of work over blocks and the data exchanged between blocks at the barrier,
// the tensor-core products (the WMMA calls emulated below, TF32 rounding included: operand
// shapes, leading dimensions, the chunked accumulation, padded rows never read), and the whole
// path from the Python loops through the glue; it cannot check what needs a GPU:
// races between the threads of a block (a missing __syncthreads), memory coherence between SMs
// (__ldcg), occupancy, the cooperative launch, WMMA's alignment rules and lane layouts, or speed.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)

struct EmulatedDim3 {
  unsigned x;
};
inline thread_local EmulatedDim3 threadIdx{0}, blockIdx{0}, blockDim{1};
inline std::barrier<>* emulated_grid_barrier = nullptr;
inline thread_local std::vector<float>* emulated_smem = nullptr;

inline void __syncthreads() {}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// The WMMA calls of the tensor-core product (TF32, m16n16k8, row-major operands), for one
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

template <class Use, int M, int N, int K, class T>
void load_matrix_sync(fragment<Use, M, N, K, T, row_major>& f, const float* p, unsigned ldm) {
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c) f.x[r * f.cols + c] = p[r * ldm + c];
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
}  // namespace
}  // namespace rnnkit_cuda

#include "gated_cuda.cu"

namespace rnnkit_cuda {

cudaStream_t current_stream(int) { return nullptr; }

namespace {

template <typename Args>
const char* run_blocks(void (*kernel)(Args, Tiling), const Args& args, const Tiling& tiling,
                       std::size_t smem_bytes) {
  const int blocks = tiling.blocks;
  if (blocks == 0 || args.N == 0) return nullptr;
  std::barrier<> grid(blocks);
  emulated_grid_barrier = &grid;
  std::vector<std::thread> threads;
  for (int b = 0; b < blocks; ++b) {
    threads.emplace_back([&, b] {
      blockIdx.x = static_cast<unsigned>(b);
      std::vector<float> smem(smem_bytes / sizeof(float),
                              std::numeric_limits<float>::quiet_NaN());
      emulated_smem = &smem;
      kernel(args, tiling);
    });
  }
  for (auto& t : threads) t.join();
  emulated_grid_barrier = nullptr;
  return nullptr;
}

}  // namespace

const char* launch_forward(const ForwardArgs& a, const Tiling& tl, cudaStream_t) {
  if (a.T == 0 || a.B == 0) return nullptr;
  const std::size_t smem = forward_smem_bytes(a.kind, a.D, tl);
  switch (a.kind) {
    case ELMAN_TANH: return run_blocks(forward_kernel<ELMAN_TANH>, a, tl, smem);
    case ELMAN_RELU: return run_blocks(forward_kernel<ELMAN_RELU>, a, tl, smem);
    case LSTM: return run_blocks(forward_kernel<LSTM>, a, tl, smem);
    case GRU: return run_blocks(forward_kernel<GRU>, a, tl, smem);
    case SLSTM: return run_blocks(forward_kernel<SLSTM>, a, tl, smem);
    default: return "unknown cell kind";
  }
}

const char* launch_backward(const BackwardArgs& a, const Tiling& tl, cudaStream_t) {
  if (a.B == 0) return nullptr;
  const std::size_t smem = backward_smem_bytes(a.kind, a.D, tl);
  switch (a.kind) {
    case ELMAN_TANH: return run_blocks(backward_kernel<ELMAN_TANH>, a, tl, smem);
    case ELMAN_RELU: return run_blocks(backward_kernel<ELMAN_RELU>, a, tl, smem);
    case LSTM: return run_blocks(backward_kernel<LSTM>, a, tl, smem);
    case GRU: return run_blocks(backward_kernel<GRU>, a, tl, smem);
    case SLSTM: return run_blocks(backward_kernel<SLSTM>, a, tl, smem);
    default: return "unknown cell kind";
  }
}

}  // namespace rnnkit_cuda
