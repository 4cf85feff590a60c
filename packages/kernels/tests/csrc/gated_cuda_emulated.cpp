// The persistent kernels of gated_cuda.cu run on the CPU, for tests without a GPU.
//
// Compiled with -DRNNKIT_HOST_EMULATION together with gated_cuda_ops.cpp (which then registers
// the ops for CPU tensors), this file includes the kernel source itself and supplies what CUDA
// would: each block of a launch is one std::thread with ONE thread per block (blockDim.x == 1;
// every loop in the kernels is strided by blockDim.x, so one thread does a block's whole work),
// its dynamic shared memory a NaN-filled buffer of the size the launch asks for, and
// grid.sync() a std::barrier over all blocks. So the emulation checks the kernels' indexing,
// layouts, the split of work over blocks and the data exchanged between blocks at the barrier,
// and the whole path from the Python loops through the glue; it cannot check what needs a GPU:
// races between the threads of a block (a missing __syncthreads), memory coherence between SMs
// (__ldcg), occupancy, the cooperative launch, or speed.
#include <barrier>
#include <cmath>
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
