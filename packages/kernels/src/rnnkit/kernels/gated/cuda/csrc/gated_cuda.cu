// Persistent CUDA time loops of the gated cells.
//
// One cooperative launch runs the whole sequence. Block `blk` owns hidden units
// [e0, e0 + units) of head n (blk = n * tiles + tile) and keeps, in shared memory for all steps,
// the slice of the recurrent weights those units need: the forward needs the columns of W
// feeding their gates (D x G*units), the backward the rows of W they feed (units x G*D, as
// dh_{t-1} = dq_t W^T). Each step a block reads the full previous vector of its head (h in the
// forward, dq in the backward) from global memory, multiplies, runs the cell's pointwise update
// for its units and writes them back; the step exchange (Tiling::exchange) separates the writes
// of step t from the reads of step t + 1: one grid-wide barrier (cg::grid_group::sync) per step,
// or per-block step counters that each block waits on for the blocks it reads from. State other
// than h (LSTM's c, the backward's dc) belongs to exactly one block and never crosses blocks.
// Where G*D staged entries of dq per batch row would crowd out rows (Tiling::stage), the
// backward stages dq in chunks of columns and multiplies each with the matching rows of its
// resident slice.
//
// Streamed fallback (Tiling::k_chunk > 0; gated_cuda.h, _plan.py), for calls whose slices of W
// do not fit in shared memory (too many bytes, or more heads than SMs): the same kernels with
// fewer blocks than items, block b owning items b, b + blocks, ... (so more heads than SMs run),
// and for each item, each step and each batch tile, W's slice read from global memory (it stays
// in L2 across steps) in chunks of k_chunk rows (forward, with the matching k_chunk entries of h;
// the backward: k_chunk columns of W with the matching k_chunk entries of dq) through a
// shared-memory tile, accumulating the product chunk by chunk. Since only a chunk of h (dq) is
// staged per row, a streamed batch tile may hold many more rows than a resident one (more than
// kMaxBatchTile: its restarting rows are words in shared memory), so that the slice of W is
// read once per step for the whole batch where shared memory allows. The forward's pointwise
// update then reads h from L2, as with 16-bit operands. The per-step barrier is unchanged.
//
// Cross-block data (hs, dq) is read with __ldcg (L2, not L1): L1 is not coherent between SMs,
// and a line cached while reading step t's slot may also hold the start of step t + 1's slot,
// which another block writes later.
//
// Tensor cores (Tiling::mma, chosen by _plan.py for 16-bit calls on sm_80 and later): the same
// loops with each step's recurrent product done by WMMA with float32 accumulation instead of
// float32 FMAs. A call in bfloat16 or float16 keeps its weights and the staged vectors (h in
// the forward, dq in the backward) in shared memory in its own dtype (MMA_BF16, MMA_FP16: half
// the bytes of float32, so bigger slices of R stay resident, and twice TF32's rate); the state,
// the gates, the pointwise math and every sum stay float32, and the pointwise update reads the
// float32 h from global memory rather than the rounded copy. MMA_TF32 (float32 operands
// rounded to TF32 as they are multiplied) serves head sizes that are multiples of 8 but not 16.
// Where a product has fewer 16 x 16 output tiles than the block has warps (the backward's
// items of 16 units have one per 16 batch rows), the warps split each tile's sum over the
// summed dimension and add their parts in shared memory, so no warp idles through a long sum.
// float32 calls keep the FMAs.
//
// The per-element step math of each cell is gated_cell.h (also compiled on the host by a test).
// With `lengths`, a sequence past its length holds its state: the element copies it unchanged
// (resets are ignored there), and in the backward its gradient passes through unchanged
// (dq = 0, the gradient of h travels by `carry`, those of c, n, m stay in dstate).
//
// float32 state and accumulation throughout; the torch glue converts 16-bit inputs.

#ifndef RNNKIT_HOST_EMULATION  // the CPU emulation (packages/kernels/tests) brings its own
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

// WMMA in TF32 and bfloat16 exists from sm_80 on; older device passes compile the FMA product
// in its place (the planner never asks them for tensor cores).
#if defined(RNNKIT_HOST_EMULATION) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define RNNKIT_WMMA 1
#endif

#include <cstdio>
#include <type_traits>

#include "gated_cell.h"
#include "gated_cuda.h"

namespace cg = cooperative_groups;

namespace rnnkit_cuda {
namespace {

#ifndef RNNKIT_HOST_EMULATION
//! The block's dynamic shared memory (aligned for the 256-bit WMMA loads and stores).
__device__ __forceinline__ float* dynamic_smem() {
  extern __shared__ __align__(128) float smem_[];
  return smem_;
}
#endif

template <int KIND>
struct Gates {
  static constexpr int value = (KIND == LSTM || KIND == SLSTM) ? 4 : (KIND == GRU ? 3 : 1);
};

//! Whether step t of sequence b is one of its valid steps (always, without lengths).
__device__ __forceinline__ bool live(const int* lengths, int t, int b) {
  return lengths == nullptr || t < lengths[b];
}

//! Whether the state entering step t of sequence b is reset (never past its length).
__device__ __forceinline__ bool reset_at(const bool* mask, const int* lengths, int t, int B,
                                         int b) {
  return mask != nullptr && mask[static_cast<long long>(t) * B + b] && live(lengths, t, b);
}

//! x rounded to TF32 (to nearest, ties away) where the tensor cores take it; the weights are
//! stored so once, when they enter shared memory, instead of at every step's product.
__device__ __forceinline__ float to_tf32(float x) {
#ifdef RNNKIT_WMMA
  return nvcuda::wmma::__float_to_tf32(x);
#else
  return x;
#endif
}

//! Ask for the line holding *p in L1 ahead of its load. The pointwise update's inputs that no
//! block writes during the launch (the forward's px, the backward's saved gates and incoming
//! gradients) are prefetched when a batch tile starts, so that their memory latency overlaps
//! the staging and the product instead of following them. A hint only (no effect on values).
__device__ __forceinline__ void prefetch_l1(const float* p) {
#ifndef RNNKIT_HOST_EMULATION
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
#else
  (void)p;
#endif
}

//! Bit b set where row b0 + b of a batch tile (b < rows <= kMaxBatchTile) restarts at step t
//! (reset_at). Called by every thread of the block at once; each warp computes the same word
//! (a lane per row, one ballot), so no thread walks the rows' flags one dependent load at a time.
__device__ __forceinline__ unsigned restart_rows(const bool* mask, const int* lengths, int t,
                                                 int B, int b0, int rows) {
#ifdef RNNKIT_HOST_EMULATION  // one thread stands for every lane
  unsigned bits = 0;
  for (int b = 0; b < rows; ++b)
    bits |= static_cast<unsigned>(reset_at(mask, lengths, t, B, b0 + b)) << b;
  return bits;
#else
  const int lane = static_cast<int>(threadIdx.x & 31);
  return __ballot_sync(0xffffffffu, lane < rows && reset_at(mask, lengths, t, B, b0 + lane));
#endif
}

//! Which rows of a staged tile restart (get `init` instead of the staged values): the bits of
//! one word (a tile of at most kMaxBatchTile rows, restart_rows), one bit per row of a tile
//! of any height in words of shared memory (restart_words), or none (the backward's staging).
struct RowBits {
  unsigned bits;
  __device__ __forceinline__ bool operator()(int b) const { return (bits >> b) & 1u; }
};
struct RowWords {
  const unsigned* words;
  __device__ __forceinline__ bool operator()(int b) const {
    return (words[b >> 5] >> (b & 31)) & 1u;
  }
};
struct NoRows {
  __device__ __forceinline__ bool operator()(int) const { return false; }
};

//! restart_rows for a tile of any number of rows: bit b % 32 of words[b / 32] set where row
//! b0 + b restarts at step t. Each warp computes whole words (a ballot each), so the loop is
//! warp-uniform; callers put a block barrier between this and the words' first reader.
__device__ __forceinline__ void restart_words(unsigned* words, const bool* mask,
                                              const int* lengths, int t, int B, int b0,
                                              int rows) {
  const int stride = max(1, static_cast<int>(blockDim.x) / 32);  // the emulation: one thread
  for (int g = static_cast<int>(threadIdx.x) / 32; 32 * g < rows; g += stride) {
    const unsigned bits = restart_rows(mask, lengths, t, B, b0 + 32 * g, min(32, rows - 32 * g));
    if ((threadIdx.x & 31) == 0) words[g] = bits;
  }
}

// Operands in shared memory: float (FMA, TF32), __nv_bfloat16 (MMA_BF16), __half (MMA_FP16).
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

//! *p = x as an operand (to nearest); `tf32`: a float operand rounded to TF32 (weights only:
//! a staged h must stay exact for the pointwise update, the product rounds its own copy).
__device__ __forceinline__ void put(float* p, float x, bool tf32) { *p = tf32 ? to_tf32(x) : x; }
__device__ __forceinline__ void put(__nv_bfloat16* p, float x, bool) {
  *p = __float2bfloat16_rn(x);
}
__device__ __forceinline__ void put(__half* p, float x, bool) { *p = __float2half_rn(x); }

//! Loads each thread keeps in flight while it copies into shared memory (copy_batched): a
//! step's staging is a latency chain (the product waits for it), so the loads of a thread go
//! out together rather than one L2 round trip after another.
constexpr int kStageLoads = 8;

//! store(i, load(i)) for i < n over the block's threads, each thread issuing kStageLoads loads
//! (of V) before it stores any (loads are independent of stores, so nothing orders them after
//! one).
template <typename V, typename Load, typename Store>
__device__ __forceinline__ void copy_batched(int n, Load load, Store store) {
  const int stride = static_cast<int>(blockDim.x);
  for (int i0 = static_cast<int>(threadIdx.x); i0 < n; i0 += kStageLoads * stride) {
    V v[kStageLoads];
#pragma unroll
    for (int j = 0; j < kStageLoads; ++j) {
      const int i = i0 + j * stride;
      if (i < n) v[j] = load(i);
    }
#pragma unroll
    for (int j = 0; j < kStageLoads; ++j) {
      const int i = i0 + j * stride;
      if (i < n) store(i, v[j]);
    }
  }
}

//! dst[b * ldd + c] = src[b * lds + c] for b < rows, c < cols, as operands (to nearest), read
//! from L2 (__ldcg: another block wrote src); rows b where restart(b) (RowBits, RowWords,
//! NoRows) get `init` instead (their loads are still made: a select, so the loop has no branch
//! per element). 16-byte loads where the rows allow (cols and lds in 4s, src 16-byte aligned).
template <typename Op, typename Restart>
__device__ __forceinline__ void stage_rows(Op* __restrict__ dst, int ldd,
                                           const float* __restrict__ src, long long lds, int rows,
                                           int cols, Restart restart, float init) {
  const bool wide =
      cols % 4 == 0 && lds % 4 == 0 && reinterpret_cast<unsigned long long>(src) % 16 == 0;
  if (wide) {
    const int per_row = cols / 4;
    copy_batched<float4>(
        rows * per_row,
        [&](int i) {
          const int b = i / per_row, c = i - b * per_row;
          return __ldcg(reinterpret_cast<const float4*>(src + b * lds) + c);
        },
        [&](int i, const float4& v) {
          const int b = i / per_row, c = i - b * per_row;
          const bool r = restart(b);
          Op* d = dst + b * ldd + 4 * c;
          put(d, r ? init : v.x, false);
          put(d + 1, r ? init : v.y, false);
          put(d + 2, r ? init : v.z, false);
          put(d + 3, r ? init : v.w, false);
        });
  } else {
    copy_batched<float>(
        rows * cols,
        [&](int i) {
          const int b = i / cols, c = i - b * cols;
          return __ldcg(src + b * lds + c);
        },
        [&](int i, float v) {
          const int b = i / cols, c = i - b * cols;
          put(dst + b * ldd + c, restart(b) ? init : v, false);
        });
  }
}

//! stage_rows from a copy already in the operand type (OperandCopies in gated_cuda.h):
//! dst[b * ldd + c] = src[b * lds + c] for b < rows, c < cols, `init` (rounded) in the rows b
//! where restart(b), in 16-byte loads of eight operands. The glue's rules for 16-bit operands
//! (head sizes, chunks and stages in 16s) put cols, lds and ldd in 8s and both sides on 16
//! bytes; a call that breaks that traps rather than stage the wrong values.
template <typename Op, typename Restart>
__device__ __forceinline__ void stage_operands(Op* __restrict__ dst, int ldd,
                                               const Op* __restrict__ src, long long lds,
                                               int rows, int cols, Restart restart,
                                               float init) {
  if (cols % 8 || lds % 8 || ldd % 8 || reinterpret_cast<unsigned long long>(src) % 16 ||
      reinterpret_cast<unsigned long long>(dst) % 16) {
    if (threadIdx.x == 0) printf("rnnkit cuda: 16-bit operands staged off 16-byte bounds\n");
    __trap();
  }
  const int per_row = cols / 8;
  copy_batched<uint4>(
      rows * per_row,
      [&](int i) {
        const int b = i / per_row, c = i - b * per_row;
        return __ldcg(reinterpret_cast<const uint4*>(src + b * lds) + c);
      },
      [&](int i, const uint4& v) {
        const int b = i / per_row, c = i - b * per_row;
        Op* d = dst + b * ldd + 8 * c;
        if (restart(b)) {
          for (int k = 0; k < 8; ++k) put(d + k, init, false);
        } else {
          *reinterpret_cast<uint4*>(d) = v;
        }
      });
}

//! The least length of a part of a split FMA sum (shorter parts cost more to add up than they
//! save).
constexpr int kMinPart = 8;

//! acc[b][j] (+)= sum_k vec[b * ldv + k] * w[k][j] for b < rows, k < K, j < J (all in shared
//! memory); `accumulate` adds to acc (the streamed loops' later chunks), else overwrites it.
//! Consecutive threads take consecutive j: w is read without bank conflicts and vec[b][k] is
//! a broadcast within a warp. With fewer outputs (rows * J) than threads, `parts` threads share
//! each output, each summing a contiguous share of K into its own slot of `split` (kThreads
//! floats), and after a barrier the block adds the parts into acc: the backward's few outputs
//! per block (rows x units) and a batch of one would otherwise leave most threads idle.
template <typename Op>
__device__ __forceinline__ void block_matvec(const Op* __restrict__ vec, int ldv,
                                             const Op* __restrict__ w, float* __restrict__ acc,
                                             float* __restrict__ split, int rows, int K, int J,
                                             bool accumulate) {
  const int outputs = rows * J;
  const int parts = max(1, min(kThreads / max(1, outputs), K / kMinPart));
  for (int t = threadIdx.x; t < outputs * parts; t += blockDim.x) {
    const int idx = t % outputs, part = t / outputs;
    const int b = idx / J;
    const int j = idx - b * J;
    const Op* v = vec + static_cast<long long>(b) * ldv;
    const int k1 = K * (part + 1) / parts;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    int k = K * part / parts;
    for (; k + 3 < k1; k += 4) {
      s0 = fmaf(to_float(v[k]), to_float(w[k * J + j]), s0);
      s1 = fmaf(to_float(v[k + 1]), to_float(w[(k + 1) * J + j]), s1);
      s2 = fmaf(to_float(v[k + 2]), to_float(w[(k + 2) * J + j]), s2);
      s3 = fmaf(to_float(v[k + 3]), to_float(w[(k + 3) * J + j]), s3);
    }
    for (; k < k1; ++k) s0 = fmaf(to_float(v[k]), to_float(w[k * J + j]), s0);
    const float sum = (s0 + s1) + (s2 + s3);
    if (parts > 1) {
      split[t] = sum;
    } else {
      acc[idx] = accumulate ? acc[idx] + sum : sum;
    }
  }
  if (parts > 1) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < outputs; idx += blockDim.x) {
      float sum = accumulate ? acc[idx] : 0.0f;
      for (int p = 0; p < parts; ++p) sum += split[p * outputs + idx];
      acc[idx] = sum;
    }
  }
}

#ifdef RNNKIT_WMMA
//! The WMMA operand format and summed step of each operand type.
template <typename Op>
struct Wmma;
template <>
struct Wmma<float> {  // float32 operands rounded to TF32
  using Precision = nvcuda::wmma::precision::tf32;
  static constexpr int k = 8;
};
template <>
struct Wmma<__nv_bfloat16> {
  using Precision = __nv_bfloat16;
  static constexpr int k = 16;
};
template <>
struct Wmma<__half> {
  using Precision = __half;
  static constexpr int k = 16;
};
#endif

//! block_matvec on the tensor cores: the same acc (+)= vec w with float32 accumulation (float
//! operands: rounded to TF32; w must hold TF32 values already, as the load functions store it
//! when asked for TF32). Needs K % Wmma<Op>::k == 0, J % 16 == 0, ldv a multiple of 16 bytes
//! and every pointer 32-byte aligned; vec and acc are read and written for ceil(rows / 16) * 16
//! rows (the rows past `rows` hold anything and their products are never read: row b of the
//! product depends only on row b of vec). Each warp takes whole 16 x 16 tiles of acc, so the
//! WMMA calls are warp-uniform; with fewer tiles than warps, `parts` warps share each tile,
//! each summing its share of K into its own 16 x 16 slot of `split` (kWarps slots), and after a
//! barrier the block adds the parts into acc.
template <typename Op>
__device__ __forceinline__ void block_matmul(const Op* __restrict__ vec, int ldv,
                                             const Op* __restrict__ w, float* __restrict__ acc,
                                             float* __restrict__ split, int rows, int K, int J,
                                             bool accumulate) {
#ifdef RNNKIT_WMMA
  namespace wmma = nvcuda::wmma;
  using P = typename Wmma<Op>::Precision;
  constexpr int KS = Wmma<Op>::k;
  const int row_tiles = (rows + 15) / 16, col_tiles = J / 16, tiles = row_tiles * col_tiles;
  const int steps = K / KS;
  const int parts = max(1, min(kWarps / tiles, steps));
  // A thread walks the warps it stands for: on a GPU only its own; in the CPU emulation (one
  // thread per block) all of them, so the split sums are exercised there too.
  const int stride = max(1, static_cast<int>(blockDim.x) / 32);
  for (int warp = static_cast<int>(threadIdx.x) / 32; warp < kWarps; warp += stride) {
    for (int job = warp; job < tiles * parts; job += kWarps) {
      const int tile = job / parts, part = job % parts;
      const int m0 = (tile / col_tiles) * 16, n0 = (tile % col_tiles) * 16;
      wmma::fragment<wmma::accumulator, 16, 16, KS, float> c;
      if (accumulate && parts == 1) {
        wmma::load_matrix_sync(c, acc + m0 * J + n0, J, wmma::mem_row_major);
      } else {
        wmma::fill_fragment(c, 0.0f);
      }
      const int s0 = steps * part / parts, s1 = steps * (part + 1) / parts;
      for (int s = s0; s < s1; ++s) {
        const int k = s * KS;
        wmma::fragment<wmma::matrix_a, 16, 16, KS, P, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, KS, P, wmma::row_major> b;
        wmma::load_matrix_sync(a, vec + m0 * ldv + k, ldv);
        wmma::load_matrix_sync(b, w + k * J + n0, J);
        if constexpr (std::is_same_v<Op, float>) {
          for (int i = 0; i < a.num_elements; ++i) a.x[i] = wmma::__float_to_tf32(a.x[i]);
        }
        wmma::mma_sync(c, a, b, c);
      }
      if (parts == 1) {
        wmma::store_matrix_sync(acc + m0 * J + n0, c, J, wmma::mem_row_major);
      } else {
        wmma::store_matrix_sync(split + job * 256, c, 16, wmma::mem_row_major);
      }
    }
  }
  if (parts > 1) {  // one round: tiles * parts <= kWarps
    __syncthreads();
    for (int idx = threadIdx.x; idx < tiles * 256; idx += blockDim.x) {
      const int tile = idx / 256, e = idx - tile * 256;
      const int r = (tile / col_tiles) * 16 + e / 16, col = (tile % col_tiles) * 16 + e % 16;
      if (r >= rows) continue;  // padding rows: never read
      float sum = accumulate ? acc[r * J + col] : 0.0f;
      for (int p = 0; p < parts; ++p) sum += split[(tile * parts + p) * 256 + e];
      acc[r * J + col] = sum;
    }
  }
#else
  block_matvec(vec, ldv, w, acc, split, rows, K, J, accumulate);
#endif
}

//! The recurrent product of a step (or of one chunk of it): on the tensor cores with mma
//! (16-bit operands always are).
template <typename Op>
__device__ __forceinline__ void block_product(bool mma, const Op* __restrict__ vec, int ldv,
                                              const Op* __restrict__ w,
                                              float* __restrict__ acc, float* __restrict__ split,
                                              int rows, int K, int J, bool accumulate) {
  if (mma || !std::is_same_v<Op, float>) {
    block_matmul(vec, ldv, w, acc, split, rows, K, J, accumulate);
  } else {
    block_matvec(vec, ldv, w, acc, split, rows, K, J, accumulate);
  }
}

struct Tile {
  int n, e0, units, width;  // head, first unit, tile width (units), owned units (<= units)
};

//! Item `item` of the cut: head item / tiles, units [e0, e0 + width).
__device__ __forceinline__ Tile tile_of(int item, int tiles, int units, int D) {
  Tile tl;
  tl.n = item / tiles;
  tl.e0 = (item - tl.n * tiles) * units;
  tl.units = units;
  tl.width = min(units, D - tl.e0);
  return tl;
}

// ------------------------------------------------------------------------------------------
// the step exchange (Exchange in gated_cuda.h)

#ifndef RNNKIT_HOST_EMULATION  // the emulation brings std::atomic and std::chrono versions
//! *p, an acquire load at device scope: what its writer did before the matching release is
//! visible to this thread afterwards.
__device__ __forceinline__ int flag_load_acquire(const int* p) {
#if __CUDA_ARCH__ >= 700
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
#else
  const int v = *reinterpret_cast<const volatile int*>(p);
  __threadfence();
  return v;
#endif
}

//! *p = v, a release store at device scope.
__device__ __forceinline__ void flag_store_release(int* p, int v) {
#if __CUDA_ARCH__ >= 700
  asm volatile("st.release.gpu.global.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
#else
  __threadfence();
  *reinterpret_cast<volatile int*>(p) = v;
#endif
}

//! Nanoseconds of the GPU's global timer (for the wait's timeout only).
__device__ __forceinline__ unsigned long long clock_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
#endif

static_assert(kThreads >= 32, "the flag wait polls with one full warp");

//! FLAGS: this block has finished `done` steps. The block barrier puts every thread's writes
//! of the step before thread 0's release of the flag.
__device__ __forceinline__ void publish_steps(int* flags, int done) {
  __syncthreads();
  if (threadIdx.x == 0) flag_store_release(flags + blockIdx.x, done);
}

//! FLAGS: return once blocks [first, first + count) have each finished `done` steps. Warp 0
//! polls, a lane per flag (strided), with acquire loads; the block barrier after the poll puts
//! the block's later reads (of what those blocks wrote) after them. A wait longer than
//! kFlagTimeoutSeconds (a flag that never comes: a bug) prints what it waited for and traps
//! instead of hanging the device.
__device__ void wait_for_blocks(const int* flags, int first, int count, int done) {
  const int lanes = min(32, static_cast<int>(blockDim.x));
  if (static_cast<int>(threadIdx.x) < lanes) {
    const unsigned long long start = clock_ns();
    for (;;) {
      bool ready = true;
      for (int i = threadIdx.x; i < count; i += lanes)
        ready = ready && flag_load_acquire(flags + first + i) >= done;
      if (__all_sync(0xffffffffu, ready)) break;
      if (clock_ns() - start > kFlagTimeoutSeconds * 1000000000ull) {
        if (threadIdx.x == 0)
          printf("rnnkit cuda: block %d waited %d s for blocks %d..%d to finish %d steps\n",
                 static_cast<int>(blockIdx.x), kFlagTimeoutSeconds, first, first + count - 1,
                 done);
        __trap();
      }
    }
  }
  __syncthreads();
}

//! One block's step exchange (Exchange in gated_cuda.h): which blocks it reads from, and how
//! it says a step is done. Both directions read what the blocks of the same items' heads
//! wrote: a resident block (one item) its head's blocks, a streamed one (items of any head)
//! every block.
struct StepExchange {
  int* flags;  // FLAGS: the launch's step counters; nullptr: the grid barrier
  int first, count;

  __device__ StepExchange(const Tiling& tiling, int* launch_flags, int tiles)
      : flags(tiling.exchange == FLAGS ? launch_flags : nullptr),
        first(tiling.k_chunk > 0 ? 0 : static_cast<int>(blockIdx.x) / tiles * tiles),
        count(tiling.k_chunk > 0 ? tiling.blocks : tiles) {}

  //! FLAGS: return once the blocks this one reads from have finished `done` steps.
  __device__ void wait(int done) const { wait_for_blocks(flags, first, count, done); }

  //! This block has finished `done` steps: its flag, or the grid barrier.
  __device__ void finish(int done, cg::grid_group& grid) const {
    if (flags) {
      publish_steps(flags, done);
    } else {
      grid.sync();
    }
  }
};

//! Rows [k0, k0 + kc) of the forward's weight slice of a tile into w ([kc][G*U]):
//! w[kk][g*U + u] = W[n][k0 + kk][g*D + e0 + u], zero past the tile's width, as operands
//! (`tf32`: float ones rounded to TF32). Consecutive threads read consecutive units of a gate
//! (contiguous in W).
template <int G, typename Op>
__device__ __forceinline__ void load_forward_rows(const float* __restrict__ Wn,
                                                  Op* __restrict__ w, const Tile& tl, int D,
                                                  int k0, int kc, bool tf32) {
  const int GU = G * tl.units;
  const long long GD = static_cast<long long>(G) * D;
  copy_batched<float>(
      kc * GU,
      [&](int idx) {
        const int kk = idx / GU, j = idx - kk * GU;
        const int g = j / tl.units, u = j - g * tl.units;
        return u < tl.width ? Wn[(k0 + kk) * GD + g * D + tl.e0 + u] : 0.0f;
      },
      [&](int idx, float x) { put(w + idx, x, tf32); });
}

//! Columns [k0, k0 + kc) of the backward's weight slice of a tile into wt ([kc][U]):
//! wt[kk][u] = W[n][e0 + u][k0 + kk], zero past the tile's width, as operands (`tf32` as
//! load_forward_rows). Consecutive threads read consecutive columns of one row of W
//! (contiguous).
template <int G, typename Op>
__device__ __forceinline__ void load_backward_cols(const float* __restrict__ Wn,
                                                   Op* __restrict__ wt, const Tile& tl, int D,
                                                   int k0, int kc, bool tf32) {
  const long long GD = static_cast<long long>(G) * D;
  copy_batched<float>(
      kc * tl.units,
      [&](int idx) {
        const int u = idx / kc, kk = idx - u * kc;
        return u < tl.width ? Wn[(tl.e0 + u) * GD + k0 + kk] : 0.0f;
      },
      [&](int idx, float x) {
        const int u = idx / kc, kk = idx - u * kc;
        put(wt + kk * tl.units + u, x, tf32);
      });
}

// ------------------------------------------------------------------------------------------
// forward

//! Op: the operands' type in shared memory (float for FMA and MMA_TF32).
template <int KIND, typename Op>
__global__ void __launch_bounds__(kThreads, 1) forward_kernel(ForwardArgs a, Tiling tiling) {
  constexpr int G = Gates<KIND>::value;
  constexpr bool kCopies = !std::is_same_v<Op, float>;  // OperandCopies (gated_cuda.h)
  cg::grid_group grid = cg::this_grid();
  auto* smem = reinterpret_cast<unsigned char*>(dynamic_smem());
  const int D = a.D, B = a.B, T = a.T;
  const int U = tiling.units, GU = G * U, GD = G * D;
  const int BB = tiling.batch_tile, KC = tiling.k_chunk;
  const bool streamed = KC > 0, mma = tiling.mma != FMA, tf32 = tiling.mma == MMA_TF32;
  const int BBa = mma ? (BB + 15) / 16 * 16 : BB;  // rows a tile takes in shared memory
  const int tiles = (D + U - 1) / U, items = a.N * tiles;
  // w [D or KC][G*U]: w[k][g*U + u] = W[n][k0 + k][g*D + e0 + u] (k0 = 0 when resident)
  Op* w = reinterpret_cast<Op*>(smem);
  // [BBa][HV]: h entering the step, after resets: all D entries (resident) or those of the
  // chunk of R being multiplied (streamed), so that a streamed tile holds many rows
  const int HV = streamed ? KC : D;
  Op* hv = w + HV * GU;
  float* acc = reinterpret_cast<float*>(hv + BBa * HV);  // [BBa][G*U]: the recurrent product
  float* split = acc + BBa * GU;  // the parts of split sums (split_bytes)
  // streamed: the tile's restarting rows (restart_words; its batch tile may exceed 32 rows)
  unsigned* words = reinterpret_cast<unsigned*>(split + (mma ? kWarps * 16 * 16 : kThreads));

  if (!streamed) {  // resident: this block's only item keeps its weights for all steps
    const Tile tl = tile_of(blockIdx.x, tiles, U, D);
    load_forward_rows<G>(a.W + static_cast<long long>(tl.n) * D * GD, w, tl, D, 0, D, tf32);
    __syncthreads();
  }

  const long long slab = static_cast<long long>(B) * D;  // one time slot of one head
  const long long gslab = static_cast<long long>(B) * GD;
  const long long cslab = KIND == SLSTM ? 2 * slab : slab;  // one slot of cs (sLSTM: c and n)
  const int slots = a.save ? T + 1 : 2;
  const StepExchange steps(tiling, a.flags, tiles);

  for (int t = 0; t < T; ++t) {
    bool ready = !steps.flags || t == 0;  // GRID: the previous step ended at the grid barrier
    for (int item = blockIdx.x; item < items; item += tiling.blocks) {
      const Tile tl = tile_of(item, tiles, U, D);
      const long long n = tl.n;
      const float* Wn = a.W + n * D * GD;
      const float* px_n = a.px + n * T * gslab;
      float* hs_n = a.hs + n * (T + 1) * slab;
      float* cs_n = a.cs ? a.cs + n * slots * cslab : nullptr;
      float* ms_n = a.ms ? a.ms + n * slots * slab : nullptr;
      float* acts_n = a.acts ? a.acts + n * T * gslab : nullptr;
      float* qs_n = a.qs ? a.qs + n * T * gslab : nullptr;
      float* tcs_n = a.tcs ? a.tcs + n * T * slab : nullptr;
      float* ex_n = a.ex ? a.ex + n * T * 2 * slab : nullptr;
      float* cnp_n = a.cnp ? a.cnp + n * T * 2 * slab : nullptr;
      float* hp_n = a.hp ? a.hp + n * T * slab : nullptr;
      const float* bhn_n = a.bhn ? a.bhn + n * D : nullptr;
      const float* h_prev = hs_n + t * slab;
      float* h_next = hs_n + (t + 1) * slab;
      Op* h16_n = kCopies ? static_cast<Op*>(a.h16) + n * 2 * slab : nullptr;
      Op* h16_next = kCopies ? h16_n + ((t + 1) & 1) * slab : nullptr;
      const float* px_t = px_n + t * gslab;
      const int s_in = a.save ? t : (t & 1), s_out = a.save ? t + 1 : ((t + 1) & 1);
      for (int b0 = 0; b0 < B; b0 += BB) {
        const int rows = min(BB, B - b0);
        for (int idx = threadIdx.x; idx < rows * tl.width; idx += blockDim.x) {
          const int b = idx / tl.width, e = tl.e0 + idx - b * tl.width;
          const float* pre = px_t + static_cast<long long>(b0 + b) * GD + e;
          for (int g = 0; g < G; ++g) prefetch_l1(pre + g * D);
        }
        // (no other block writes the resets: read them before the wait)
        const unsigned restart = streamed ? 0u : restart_rows(a.mask, a.lengths, t, B, b0, rows);
        if (streamed) restart_words(words, a.mask, a.lengths, t, B, b0, rows);
        if (!ready) {  // h_{t-1} of this head is complete once its blocks finished t steps
          steps.wait(t);
          ready = true;
        }
        const Op* h16_prev = kCopies ? h16_n + (t & 1) * slab + static_cast<long long>(b0) * D
                                     : nullptr;
        if (!streamed) {
          if constexpr (kCopies) {
            stage_operands(hv, D, h16_prev, D, rows, D, RowBits{restart}, a.h_init);
          } else {
            stage_rows(hv, D, h_prev + static_cast<long long>(b0) * D, D, rows, D,
                       RowBits{restart}, a.h_init);
          }
          __syncthreads();
          block_product(mma, hv, D, w, acc, split, rows, D, GU, false);
          __syncthreads();
        } else {
          // R's rows for this item KC at a time from L2, each chunk with the matching entries
          // of h for all the tile's rows: the item's slice of R is read once per tile, and the
          // planner makes the tile as tall as the batch where shared memory allows.
          __syncthreads();  // the restart words are written
          for (int k0 = 0; k0 < D; k0 += KC) {
            const int kc = min(KC, D - k0);
            load_forward_rows<G>(Wn, w, tl, D, k0, kc, tf32);
            if constexpr (kCopies) {
              stage_operands(hv, KC, h16_prev + k0, D, rows, kc, RowWords{words}, a.h_init);
            } else {
              stage_rows(hv, KC, h_prev + static_cast<long long>(b0) * D + k0, D, rows, kc,
                         RowWords{words}, a.h_init);
            }
            __syncthreads();
            block_product(mma, hv, KC, w, acc, split, rows, kc, GU, k0 > 0);
            __syncthreads();
          }
        }
        for (int idx = threadIdx.x; idx < rows * tl.width; idx += blockDim.x) {
          const int b = idx / tl.width, u = idx - b * tl.width;
          const int bg = b0 + b, e = tl.e0 + u;
          const float* pre = px_t + static_cast<long long>(bg) * GD + e;  // gate g at pre[g*D]
          const float* q = acc + b * GU + u;                               // gate g at q[g*U]
          const long long at = static_cast<long long>(bg) * D + e;
          const long long gat = static_cast<long long>(bg) * GD + e;
          const long long cat = (KIND == SLSTM ? 2LL : 1LL) * bg * D + e;  // in a slot of cs
          // Every load first, then the stores: a load the compiler cannot move above a store
          // (it cannot tell the buffers apart) would wait for it, one latency after another.
          // reset_at(..., bg), from the staging
          const bool reset = streamed ? RowWords{words}(b) : RowBits{restart}(b);
          const bool alive = live(a.lengths, t, bg);
          // The resident staged copy is exact for float operands; 16-bit ones rounded it, and
          // a streamed one holds only the last chunk's entries: those read h from L2.
          const float hprev = std::is_same_v<Op, float> && !streamed ? to_float(hv[b * D + e])
                              : reset                                ? a.h_init
                                                                     : __ldcg(h_prev + at);
          float x[G];  // the projected input of each gate
#pragma unroll
          for (int g = 0; g < G; ++g) x[g] = pre[g * D];
          // the state entering the step besides h (this block wrote it): LSTM c; sLSTM c, n, m
          const float c_in = KIND == LSTM || KIND == SLSTM ? cs_n[s_in * cslab + cat] : 0.0f;
          const float n_in = KIND == SLSTM ? cs_n[s_in * cslab + cat + D] : 0.0f;
          const float m_in = KIND == SLSTM ? ms_n[s_in * slab + at] : 0.0f;
          const float bhn = KIND == GRU && bhn_n ? bhn_n[e] : 0.0f;
          if (hp_n) hp_n[t * slab + at] = hprev;
          if (!alive) {  // past the sequence's end: hold the state
            h_next[at] = hprev;
            if constexpr (kCopies) put(h16_next + at, hprev, false);
            if (KIND == LSTM || KIND == SLSTM) cs_n[s_out * cslab + cat] = c_in;
            if (KIND == SLSTM) {
              cs_n[s_out * cslab + cat + D] = n_in;
              ms_n[s_out * slab + at] = m_in;
            }
            continue;
          }
          float h;
          if constexpr (KIND == ELMAN_TANH || KIND == ELMAN_RELU) {
            h = cell::elman_forward(x[0] + q[0], KIND == ELMAN_RELU);
          } else if constexpr (KIND == LSTM) {
            float cp = c_in;
            if (reset) {
              cp = a.c_init;
              cs_n[s_in * slab + at] = cp;  // the backward reads c entering the step after it
            }
            const cell::LstmStep st =
                cell::lstm_forward(x[0] + q[0], x[1] + q[U], x[2] + q[2 * U], x[3] + q[3 * U], cp);
            h = st.h;
            cs_n[s_out * slab + at] = st.c;
            if (a.save) {
              float* ac = acts_n + t * gslab + gat;
              ac[0] = st.i;
              ac[D] = st.f;
              ac[2 * D] = st.g;
              ac[3 * D] = st.o;
              tcs_n[t * slab + at] = st.tc;
            }
          } else if constexpr (KIND == GRU) {  // b_hn joins the recurrent term (r multiplies it)
            const float qn = q[2 * U] + bhn;
            const cell::GruStep st = cell::gru_forward(x[0], x[1], x[2], q[0], q[U], qn, hprev);
            h = st.h;
            if (a.save) {
              float* ac = acts_n + t * gslab + gat;
              ac[0] = st.r;
              ac[D] = st.z;
              ac[2 * D] = st.n;
              float* qq = qs_n + t * gslab + gat;
              qq[0] = q[0];
              qq[D] = q[U];
              qq[2 * D] = qn;
            }
          } else {  // sLSTM
            float cp = c_in, np = n_in, mp = m_in;
            if (reset) {
              cp = a.c_init;
              np = a.n_init;
              mp = a.m_init;
            }
            if (cnp_n) {
              float* cnp = cnp_n + t * 2 * slab + cat;
              cnp[0] = cp;
              cnp[D] = np;
            }
            const float ai = x[0] + q[0], af = x[1] + q[U];
            const cell::SlstmStep st =
                cell::slstm_forward(ai, af, x[2] + q[2 * U], x[3] + q[3 * U], cp, np, mp);
            h = st.h;
            float* cn_out = cs_n + s_out * cslab + cat;
            cn_out[0] = st.c;
            cn_out[D] = st.n;
            ms_n[s_out * slab + at] = st.m;
            if (a.save) {
              float* ac = acts_n + t * gslab + gat;
              ac[0] = ai;
              ac[D] = af;
              ac[2 * D] = st.zt;
              ac[3 * D] = st.o;
              float* ex = ex_n + t * 2 * slab + cat;
              ex[0] = st.ip;
              ex[D] = st.fp;
            }
          }
          h_next[at] = h;
          if constexpr (kCopies) put(h16_next + at, h, false);
        }
        __syncthreads();  // hv and acc are reused by the next batch tile
      }
    }
    steps.finish(t + 1, grid);
  }
}

// ------------------------------------------------------------------------------------------
// backward

template <int KIND, typename Op>
__global__ void __launch_bounds__(kThreads, 1) backward_kernel(BackwardArgs a, Tiling tiling) {
  constexpr int G = Gates<KIND>::value;
  constexpr int K = KIND == SLSTM ? 3 : (KIND == LSTM ? 1 : 0);  // state fields besides h
  constexpr bool kCopies = !std::is_same_v<Op, float>;  // OperandCopies (gated_cuda.h)
  cg::grid_group grid = cg::this_grid();
  auto* smem = reinterpret_cast<unsigned char*>(dynamic_smem());
  const int D = a.D, B = a.B, T = a.T;
  const int U = tiling.units, GD = G * D;
  const int BB = tiling.batch_tile, KC = tiling.k_chunk;
  const bool streamed = KC > 0, mma = tiling.mma != FMA, tf32 = tiling.mma == MMA_TF32;
  const int BBa = mma ? (BB + 15) / 16 * 16 : BB;  // rows a tile takes in shared memory
  const int tiles = (D + U - 1) / U, items = a.N * tiles;
  // columns of dq staged at once: a streamed chunk, or the resident stage (all G*D by default)
  const int SC = streamed ? KC : (tiling.stage > 0 ? tiling.stage : GD);
  Op* wt = reinterpret_cast<Op*>(smem);    // [G*D or KC][U]: wt[k][u] = W[n][e0 + u][k]
  Op* dv = wt + (streamed ? KC : GD) * U;  // [BBa][SC]: dq of the following step
  float* acc = reinterpret_cast<float*>(dv + BBa * SC);  // [BBa][U]: dq_{t+1} W^T, own units
  float* split = acc + BBa * U;  // the parts of split sums (split_bytes)

  if (!streamed) {  // resident: this block's only item keeps its weights for all steps
    const Tile tl = tile_of(blockIdx.x, tiles, U, D);
    load_backward_cols<G>(a.W + static_cast<long long>(tl.n) * D * GD, wt, tl, D, 0, GD, tf32);
    __syncthreads();
  }

  const long long slab = static_cast<long long>(B) * D;
  const long long gslab = static_cast<long long>(B) * GD;
  const long long cslab = KIND == SLSTM ? 2 * slab : slab;
  const StepExchange steps(tiling, a.flags, tiles);

  // Iteration s runs the pointwise backward of step s (s = -1: only the gradient of h0). The
  // gradient of h_s (slot s + 1) is what reaches it directly plus, unless a reset entering
  // step s + 1 cut it, dq_{s+1} W^T and the carry (GRU's direct path dh_{s+1} z_{s+1}, or the
  // whole gradient where step s + 1 is past the sequence's end).
  for (int s = T - 1; s >= -1; --s) {
    bool ready = !steps.flags || s + 1 >= T;  // GRID: iteration s + 1 ended at the barrier
    for (int item = blockIdx.x; item < items; item += tiling.blocks) {
      const Tile tl = tile_of(item, tiles, U, D);
      const long long n = tl.n;
      const float* Wn = a.W + n * D * GD;
      const float* hs_n = a.hs + n * (T + 1) * slab;
      const float* dy_n = a.d_hs + n * (T + 1) * slab;
      const float* acts_n = a.acts ? a.acts + n * T * gslab : nullptr;
      const float* cs_n = a.cs ? a.cs + n * (T + 1) * cslab : nullptr;
      const float* tcs_n = a.tcs ? a.tcs + n * T * slab : nullptr;
      const float* qs_n = a.qs ? a.qs + n * T * gslab : nullptr;
      const float* ms_n = a.ms ? a.ms + n * (T + 1) * slab : nullptr;
      const float* ex_n = a.ex ? a.ex + n * T * 2 * slab : nullptr;
      // Without resets the c, n entering step s are those leaving step s - 1: cs's slot s.
      const float* cnp_n = a.cnp ? a.cnp + n * T * 2 * slab : cs_n;
      // Without resets the h entering step s is hs's slot s (the same stride as hp's slots).
      const float* hp_n = a.hp ? a.hp + n * T * slab : hs_n;
      float* dq_n = a.dq + n * T * gslab;
      float* dpx_n = a.dpx ? a.dpx + n * T * gslab : nullptr;
      float* dst_n = a.dstate ? a.dstate + n * K * slab : nullptr;
      float* carry_n = a.carry ? a.carry + n * slab : nullptr;
      float* dh0_n = a.dh0 + n * slab;
      const bool has_next = s + 1 < T;
      const float* dq_next = dq_n + (s + 1) * gslab;
      Op* dq16_n = kCopies ? static_cast<Op*>(a.dq16) + n * 2 * gslab : nullptr;
      for (int b0 = 0; b0 < B; b0 += BB) {
        const int rows = min(BB, B - b0);
        for (int idx = threadIdx.x; s >= 0 && idx < rows * tl.width; idx += blockDim.x) {
          const int b = idx / tl.width, e = tl.e0 + idx - b * tl.width;
          const long long at = static_cast<long long>(b0 + b) * D + e;
          prefetch_l1(dy_n + (s + 1) * slab + at);
          prefetch_l1(hs_n + (s + 1) * slab + at);
          if (acts_n) {
            const float* ac = acts_n + s * gslab + static_cast<long long>(b0 + b) * GD + e;
            for (int g = 0; g < G; ++g) prefetch_l1(ac + g * D);
          }
          if (tcs_n) prefetch_l1(tcs_n + s * slab + at);
        }
        if (!ready) {  // dq_{s+1} of this head is complete after T - s - 1 iterations
          steps.wait(T - s - 1);
          ready = true;
        }
        // dq's columns SC at a time against the matching rows of R: resident, or (streamed)
        // read from L2 into the tile buffer with each chunk
        for (int k0 = 0; has_next && k0 < GD; k0 += SC) {
          const int kc = min(SC, GD - k0);
          if (streamed) load_backward_cols<G>(Wn, wt, tl, D, k0, kc, tf32);
          if constexpr (kCopies) {
            const Op* dq16_next = dq16_n + ((s + 1) & 1) * gslab;
            stage_operands(dv, SC, dq16_next + static_cast<long long>(b0) * GD + k0, GD, rows, kc,
                           NoRows{}, 0.0f);
          } else {
            stage_rows(dv, SC, dq_next + static_cast<long long>(b0) * GD + k0, GD, rows, kc,
                       NoRows{}, 0.0f);
          }
          __syncthreads();
          block_product(mma, dv, SC, streamed ? wt : wt + k0 * U, acc, split, rows, kc, U,
                        k0 > 0);
          __syncthreads();
        }
        for (int idx = threadIdx.x; idx < rows * tl.width; idx += blockDim.x) {
          const int b = idx / tl.width, u = idx - b * tl.width;
          const int bg = b0 + b, e = tl.e0 + u;
          const long long at = static_cast<long long>(bg) * D + e;
          const long long gat = static_cast<long long>(bg) * GD + e;
          const long long cat = (KIND == SLSTM ? 2LL : 1LL) * bg * D + e;
          float gh = dy_n[(s + 1) * slab + at];
          if (has_next && !reset_at(a.mask, a.lengths, s + 1, B, bg)) {
            float r = acc[b * U + u];
            if (carry_n) r += carry_n[at];
            gh += r;
          }
          if (s < 0) {
            dh0_n[at] = gh;
            continue;
          }
          float* dq = dq_n + s * gslab + gat;
          Op* dq16 = kCopies ? dq16_n + (s & 1) * gslab + gat : nullptr;
          // dq of gate g: the float32 value (the weight gradient's GEMM reads it) and, with
          // 16-bit operands, the operand the other blocks stage (OperandCopies)
          auto put_dq = [&](int g, float v) {
            dq[g * D] = v;
            if constexpr (kCopies) put(dq16 + g * D, v, false);
          };
          if (!live(a.lengths, s, bg)) {  // a held step: h_{s+1} = h_s, no gate saw it
            for (int g = 0; g < G; ++g) put_dq(g, 0.0f);
            if (dpx_n) {
              float* dp = dpx_n + s * gslab + gat;
              for (int g = 0; g < G; ++g) dp[g * D] = 0.0f;
            }
            carry_n[at] = gh;
            continue;
          }
          const bool reset = reset_at(a.mask, a.lengths, s, B, bg);
          if constexpr (KIND == ELMAN_TANH || KIND == ELMAN_RELU) {
            put_dq(0, cell::elman_backward(gh, hs_n[(s + 1) * slab + at], KIND == ELMAN_RELU));
          } else if constexpr (KIND == LSTM) {
            const float* ac = acts_n + s * gslab + gat;
            const cell::LstmGrad d =
                cell::lstm_backward(gh, dst_n[at], ac[0], ac[D], ac[2 * D], ac[3 * D],
                                    tcs_n[s * slab + at], cs_n[s * slab + at]);
            put_dq(0, d.di);
            put_dq(1, d.df);
            put_dq(2, d.dg);
            put_dq(3, d.dout);
            // A reset replaces c entering step s: its gradient is exactly zero (not 0 * NaN).
            dst_n[at] = reset ? 0.0f : d.dc_prev;
          } else if constexpr (KIND == GRU) {
            const float* ac = acts_n + s * gslab + gat;
            const float qn = qs_n[s * gslab + gat + 2 * D];
            const cell::GruGrad d =
                cell::gru_backward(gh, ac[0], ac[D], ac[2 * D], qn, hp_n[s * slab + at]);
            put_dq(0, d.dr);
            put_dq(1, d.dz);
            put_dq(2, d.dqn);
            float* dp = dpx_n + s * gslab + gat;
            dp[0] = d.dr;
            dp[D] = d.dz;
            dp[2 * D] = d.dxn;
            carry_n[at] = d.dh_prev;
          } else {  // sLSTM
            const float* ac = acts_n + s * gslab + gat;
            const float* ex = ex_n + s * 2 * slab + cat;
            const float* cn = cs_n + (s + 1) * cslab + cat;
            const float* cnp = cnp_n + s * 2 * slab + cat;
            const cell::SlstmGrad d = cell::slstm_backward(
                gh, dst_n[at], dst_n[slab + at], dst_n[2 * slab + at], ac[0], ac[D], ac[2 * D],
                ac[3 * D], ex[0], ex[D], cn[0], cn[D], ms_n[(s + 1) * slab + at],
                hs_n[(s + 1) * slab + at], cnp[0], cnp[D]);
            put_dq(0, d.di);
            put_dq(1, d.df);
            put_dq(2, d.dz);
            put_dq(3, d.dout);
            dst_n[at] = reset ? 0.0f : d.dc_prev;
            dst_n[slab + at] = reset ? 0.0f : d.dn_prev;
            dst_n[2 * slab + at] = reset ? 0.0f : d.dm_prev;
          }
          if constexpr (KIND != GRU) {
            if (carry_n) carry_n[at] = 0.0f;  // only a held step passes h's gradient directly
          }
        }
        __syncthreads();  // dv and acc are reused by the next batch tile
      }
    }
    if (s >= 0) steps.finish(T - s, grid);
  }
}

#ifndef RNNKIT_HOST_EMULATION  // the emulation runs the kernels its own way
// ------------------------------------------------------------------------------------------
// launch

template <typename Args>
using KernelFn = void (*)(Args, Tiling);

template <typename Args>
const char* launch(KernelFn<Args> fn, const Args& args, const Tiling& tiling, std::size_t smem,
                   cudaStream_t stream) {
  static thread_local char message[512];
  const int blocks = tiling.blocks;
  if (blocks == 0 || args.N == 0) return nullptr;
  int device = 0, sms = 0, cooperative = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  if (err == cudaSuccess)
    err = cudaFuncSetAttribute(reinterpret_cast<const void*>(fn),
                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
  if (err == cudaSuccess)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, kThreads, smem);
  if (err != cudaSuccess) {
    std::snprintf(message, sizeof message, "CUDA error before the launch: %s",
                  cudaGetErrorString(err));
    return message;
  }
  if (!cooperative) return "the device does not support cooperative launches";
  if (per_sm * sms < blocks) {
    std::snprintf(message, sizeof message,
                  "%d blocks of %zu bytes of shared memory cannot all be resident (%d per SM, "
                  "%d SMs)",
                  blocks, smem, per_sm, sms);
    return message;
  }
  Args copy = args;
  Tiling tcopy = tiling;
  void* params[] = {&copy, &tcopy};
  err = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(fn), dim3(blocks),
                                    dim3(kThreads), params, smem, stream);
  if (err != cudaSuccess) {
    std::snprintf(message, sizeof message, "cooperative launch failed: %s",
                  cudaGetErrorString(err));
    return message;
  }
  return nullptr;
}

#endif  // RNNKIT_HOST_EMULATION

//! run(fn) with the kernel of one direction (Pick: ForwardKernel or BackwardKernel, below) for
//! `kind` and `mma`'s operand type; "unknown cell kind" for another kind. Shared by the launches
//! here and by the CPU emulation's.
template <template <int, typename> class Pick, typename Run>
const char* with_kernel(int kind, int mma, Run&& run) {
  auto typed = [&](auto kind_tag) -> const char* {
    constexpr int KIND = decltype(kind_tag)::value;
    switch (mma) {
      case MMA_BF16: return run(Pick<KIND, __nv_bfloat16>::fn);
      case MMA_FP16: return run(Pick<KIND, __half>::fn);
      default: return run(Pick<KIND, float>::fn);  // FMA, MMA_TF32
    }
  };
  switch (kind) {
    case ELMAN_TANH: return typed(std::integral_constant<int, ELMAN_TANH>{});
    case ELMAN_RELU: return typed(std::integral_constant<int, ELMAN_RELU>{});
    case LSTM: return typed(std::integral_constant<int, LSTM>{});
    case GRU: return typed(std::integral_constant<int, GRU>{});
    case SLSTM: return typed(std::integral_constant<int, SLSTM>{});
    default: return "unknown cell kind";
  }
}

template <int KIND, typename Op>
struct ForwardKernel {
  static constexpr void (*fn)(ForwardArgs, Tiling) = forward_kernel<KIND, Op>;
};

template <int KIND, typename Op>
struct BackwardKernel {
  static constexpr void (*fn)(BackwardArgs, Tiling) = backward_kernel<KIND, Op>;
};

}  // namespace

std::size_t forward_smem_bytes(int kind, int D, const Tiling& tl) {
  const std::size_t GU = static_cast<std::size_t>(gates_of(kind)) * tl.units;
  // streamed: one chunk of R and the matching entries of h (KC of D), and a restart word per
  // 32 rows of the tile
  const std::size_t rows = tl.k_chunk > 0 ? tl.k_chunk : D;
  const std::size_t tile = static_cast<std::size_t>(tile_rows(tl));
  const std::size_t words = tl.k_chunk > 0 ? (static_cast<std::size_t>(tl.batch_tile) + 31) / 32 : 0;
  // weights and staged h as operands, the product in float32, the split scratch, the words
  return static_cast<std::size_t>(operand_bytes(tl.mma)) * (rows * GU + tile * rows) +
         sizeof(float) * tile * GU + static_cast<std::size_t>(split_bytes(tl.mma)) +
         sizeof(unsigned) * words;
}

std::size_t backward_smem_bytes(int kind, int D, const Tiling& tl) {
  const std::size_t GD = static_cast<std::size_t>(gates_of(kind)) * D;
  const std::size_t cols = tl.k_chunk > 0 ? tl.k_chunk : GD;  // streamed: one chunk of R, dq
  const std::size_t staged = tl.k_chunk > 0 ? cols : (tl.stage > 0 ? tl.stage : GD);
  const std::size_t tile = static_cast<std::size_t>(tile_rows(tl));
  // weights and staged dq as operands, the product in float32, the split scratch
  return static_cast<std::size_t>(operand_bytes(tl.mma)) * (cols * tl.units + tile * staged) +
         sizeof(float) * tile * tl.units + static_cast<std::size_t>(split_bytes(tl.mma));
}

#ifndef RNNKIT_HOST_EMULATION
const char* launch_forward(const ForwardArgs& a, const Tiling& tl, cudaStream_t stream) {
  if (a.T == 0 || a.B == 0) return nullptr;
  const std::size_t smem = forward_smem_bytes(a.kind, a.D, tl);
  return with_kernel<ForwardKernel>(
      a.kind, tl.mma, [&](auto fn) { return launch(fn, a, tl, smem, stream); });
}

const char* launch_backward(const BackwardArgs& a, const Tiling& tl, cudaStream_t stream) {
  if (a.B == 0) return nullptr;
  const std::size_t smem = backward_smem_bytes(a.kind, a.D, tl);
  return with_kernel<BackwardKernel>(
      a.kind, tl.mma, [&](auto fn) { return launch(fn, a, tl, smem, stream); });
}

#endif  // RNNKIT_HOST_EMULATION

}  // namespace rnnkit_cuda
