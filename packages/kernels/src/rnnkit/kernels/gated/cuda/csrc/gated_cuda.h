// Persistent CUDA time loops of the gated cells (Elman, LSTM, GRU, sLSTM): the launch interface.
//
// No torch headers here or in gated_cuda.cu, so that the kernels compile with plain nvcc (the
// CI compile check); gated_cuda_ops.cpp is the torch glue.
//
// Layouts are those of the `fused` loops (rnnkit/kernels/gated/fused/_common.py), all float32,
// contiguous, head-major and time-major:
//   px    (N, T, B, G*D)   projected input, gate g of unit e at [.., g*D + e]
//   W     (N, D, G*D)      one step is gates = px_t + h_{t-1} W (per head)
//   hs    (N, T+1, B, D)   slot 0 the initial h, slot t+1 the output of step t
//   mask  (T, B) bool      true where the state entering step t is reset (nullptr: none)
//   lengths (B,) int32     sequence b has lengths[b] valid steps (nullptr: all T). Past its
//                          length a sequence's state is held (copied unchanged, resets ignored)
//                          and its gradients pass through unchanged; the caller zeroes y there.
// Gate orders are torch's: LSTM i, f, g, o; GRU r, z, n; sLSTM (xLSTM) i, f, z, o.
// The per-element step math is in gated_cell.h.
#pragma once

#include <cstddef>

#ifdef RNNKIT_HOST_EMULATION  // the CPU emulation of the kernels (packages/kernels/tests)
struct CUstream_st;
using cudaStream_t = CUstream_st*;
#else
#include <cuda_runtime.h>
#endif

namespace rnnkit_cuda {

enum CellKind : int { ELMAN_TANH = 0, ELMAN_RELU = 1, LSTM = 2, GRU = 3, SLSTM = 4 };

//! Threads per block of every kernel here.
constexpr int kThreads = 256;

//! Batch rows of one resident tile at most (Tiling::batch_tile): a tile's rows that restart at
//! a step are one bit each of a 32-bit word. A streamed tile may be taller (its words sit in
//! shared memory: forward_smem_bytes).
constexpr int kMaxBatchTile = 32;

//! Gates per hidden unit of a cell kind (W has G*D columns per head).
inline int gates_of(int kind) {
  return (kind == LSTM || kind == SLSTM) ? 4 : (kind == GRU ? 3 : 1);
}

//! How the work is cut. An item is `units` hidden units of one head (the last item of a head
//! may be shorter); there are N * ceil(D / units) items, each owned by one block for the whole
//! sequence, which walks the batch in tiles of `batch_tile` rows. All `blocks` blocks must be
//! resident at once (cooperative launch).
//!   resident (k_chunk == 0): one item per block (blocks == items); the block keeps the slice
//!       of W its units need in shared memory for all steps.
//!   streamed (k_chunk > 0): block b owns items b, b + blocks, ... (blocks <= items) and each
//!       step reads the slice of W of each item from global memory (L2) in chunks of k_chunk
//!       rows (forward: rows of W, i.e. entries of h; backward: columns of W, i.e. entries of
//!       dq) through a shared-memory tile, so any head count and head size fit. Each chunk is
//!       multiplied with the matching k_chunk entries of h (dq) of every row of the batch
//!       tile, staged with it: the slice is read once per tile, and a streamed tile may have
//!       more than kMaxBatchTile rows.
//!   mma (a Product): how this launch computes its recurrent products. FMA: float32 FMAs.
//!       The others run them on the tensor cores (WMMA, sm_80 and later) with float32
//!       accumulation, for calls whose inputs are 16-bit anyway: MMA_TF32 rounds float32
//!       operands to TF32 as it multiplies; MMA_BF16 / MMA_FP16 keep the weights and the staged
//!       vectors (h, dq) in shared memory as bfloat16 / float16 (half the bytes; the weights of
//!       a call in that dtype lose nothing), while the state, the gates and every sum stay
//!       float32. The product's columns must come in 16s (forward: G * units; backward: units),
//!       D and k_chunk must be multiples of mma_k(mma) (8 for TF32, 16 for 16-bit operands);
//!       each batch tile then takes ceil(batch_tile / 16) * 16 rows of shared memory (the
//!       MMA's 16-row operand; the rows past the tile hold anything, since a row of the product
//!       depends only on the same row of the vector operand, and are never read), and the
//!       block has a float32 scratch of one 16 x 16 tile per warp (split_bytes) where warps
//!       that share one output tile add up their parts of its sum. (With FMAs the scratch is
//!       one float per thread: where a product has fewer outputs than the block has threads,
//!       threads share each output's sum the same way.)
enum Product : int { FMA = 0, MMA_TF32 = 1, MMA_BF16 = 2, MMA_FP16 = 3 };

//!   stage (resident backward only; 0: all G*D): the backward stages dq_{t+1} in chunks of
//!       `stage` columns (a multiple of kStageStep), each multiplied with the matching rows of the
//!       resident weights before the next is staged, so that a slice of R that fits leaves room
//!       for a full batch tile even where G*D staged entries per row would not.
//!   exchange (an Exchange): how a step's results reach the blocks that read them next.
enum Exchange : int {
  //! cg::grid_group::sync() after every step: every block waits for every other.
  GRID = 0,
  //! Each block publishes in flags[block] how many steps it has finished (release), and a
  //! block waits (acquire) only for the blocks whose results it reads next: the blocks of its
  //! own head when resident (heads never exchange data), all blocks when streamed (a block's
  //! items may span heads). Nothing a block reads is overwritten later in the launch (hs and dq
  //! keep a slot per step), so a block may run ahead of the blocks it does not wait for. The
  //! wait of step t + 1 starts after that step's read-only prefetches (a split barrier).
  FLAGS = 1,
};

//! The resident backward's stage is a multiple of this many columns (every operand format's
//! summed step divides it); _plan.py's STAGE_STEP is the same number.
constexpr int kStageStep = 16;

struct Tiling {
  int units;
  int batch_tile;
  int k_chunk;
  int blocks;
  int mma = FMA;
  int stage = 0;
  int exchange = GRID;
};

//! Seconds a block waits for a flag before it reports the stall and traps (a lost flag would
//! otherwise hang the GPU; no step of a working launch takes this long).
constexpr int kFlagTimeoutSeconds = 30;

//! Warps per block.
constexpr int kWarps = kThreads / 32;

//! Bytes of one operand in shared memory (weights, staged h or dq) under product `mma`.
inline int operand_bytes(int mma) { return mma == MMA_BF16 || mma == MMA_FP16 ? 2 : 4; }

//! The summed dimension's step of one tensor-core product under `mma` (0 for FMA).
inline int mma_k(int mma) { return mma == FMA ? 0 : (mma == MMA_TF32 ? 8 : 16); }

//! Bytes of the float32 scratch where the parts of a split sum meet: one 16 x 16 tile per warp
//! with tensor cores, one float per thread with FMAs (threads sharing an output's sum).
inline int split_bytes(int mma) { return mma == FMA ? kThreads * 4 : kWarps * 16 * 16 * 4; }

//! Batch rows a tile takes in shared memory: its rows, rounded up to the MMA's 16 with mma.
inline int tile_rows(const Tiling& tl) {
  return tl.mma ? (tl.batch_tile + 15) / 16 * 16 : tl.batch_tile;
}

//! Forward loop. Buffers the caller does not want are nullptr. "slots" below is T + 1 with
//! save, else 2 (the state leaving step t then sits in slot (t + 1) % 2).
struct ForwardArgs {
  int kind, N, T, B, D;
  const float* px;    // (N, T, B, G*D)
  const float* W;     // (N, D, G*D)
  const float* bhn;   // GRU: (N, D) bias of the candidate's recurrent term, or nullptr
  const bool* mask;   // (T, B) or nullptr
  const int* lengths; // (B,) or nullptr
  float h_init;       // value h restarts from at a reset
  float c_init;       // value c restarts from at a reset (LSTM, sLSTM)
  float n_init;       // value n restarts from at a reset (sLSTM)
  float m_init;       // value m restarts from at a reset (sLSTM)
  int save;           // keep the per-step buffers the backward reads
  float* hs;          // (N, T+1, B, D), slot 0 filled by the caller
  float* cs;          // LSTM: (N, slots, B, D), slot 0 filled; c entering each step after
                      //       resets, then the final c (slot T, or T % 2 without save)
                      // sLSTM: (N, slots, B, 2, D), slot 0 filled; c and n leaving each step
                      //       (as the `fused` loop's cn: resets are not written back)
  float* ms;          // sLSTM: (N, slots, B, D), slot 0 filled; m leaving each step
  float* acts;        // save: (N, T, B, G*D) gate activations (LSTM i f g o; GRU r z n;
                      //       sLSTM the pre-activations ĩ f̃, then tanh z̃, σ(õ))
  float* qs;          // GRU with save: (N, T, B, 3D) recurrent terms q = h W + [0, 0, b_hn]
  float* tcs;         // LSTM with save: (N, T, B, D) tanh(c_t)
  float* ex;          // sLSTM with save: (N, T, B, 2, D) the exponential gates i', f'
  float* cnp;         // sLSTM with save and resets: (N, T, B, 2, D) c, n entering each step
                      //       after resets
  float* hp;          // save with resets: (N, T, B, D) h entering each step after resets
  int* flags;         // FLAGS exchange: (blocks,) int32, zero at the launch; else nullptr
  void* h16;          // MMA_BF16 / MMA_FP16: (N, 2, B, D) h as operands (bfloat16 / float16),
                      //       slot t % 2 the h leaving step t - 1, before resets (slot 0: h0,
                      //       filled by the caller); else nullptr. See OperandCopies below.
};

//! Reverse loop ("stored gates": it reads the buffers the forward saved, no recomputation).
struct BackwardArgs {
  int kind, N, T, B, D;
  const float* W;     // (N, D, G*D)
  const float* hs;    // (N, T+1, B, D) from the forward
  const float* acts;  // (N, T, B, G*D)   (LSTM, GRU, sLSTM)
  const float* cs;    // LSTM: (N, T+1, B, D); sLSTM: (N, T+1, B, 2, D)
  const float* tcs;   // LSTM: (N, T, B, D)
  const float* qs;    // GRU: (N, T, B, 3D)
  const float* ms;    // sLSTM: (N, T+1, B, D)
  const float* ex;    // sLSTM: (N, T, B, 2, D)
  const float* cnp;   // sLSTM with resets: (N, T, B, 2, D); without, cs's slots 0..T-1 are read
  const float* hp;    // GRU: h entering each step, (N, T, B, D) (hs without resets)
  const bool* mask;   // (T, B) or nullptr
  const int* lengths; // (B,) or nullptr
  const float* d_hs;  // (N, T+1, B, D) gradient reaching each slot of hs directly
  float* dq;          // (N, T, B, G*D) out: gradient of the recurrent product's output
  float* dpx;         // GRU: (N, T, B, 3D) out: gradient of px (differs from dq in gate n)
  float* dstate;      // LSTM (K = 1: c), sLSTM (K = 3: c, n, m): (N, K, B, D) in: gradient of
                      //       the final state; out: that of the initial state
  float* carry;       // GRU or lengths: (N, B, D) scratch: the gradient of h_t reaching it from
                      //       step t + 1 other than through dq (GRU's z gh; gh at a held step)
  float* dh0;         // (N, B, D) out: gradient of the initial h
  int* flags;         // FLAGS exchange: (blocks,) int32, zero at the launch; else nullptr
  void* dq16;         // MMA_BF16 / MMA_FP16: (N, 2, B, G*D) scratch, dq of step s as operands
                      //       in slot s % 2; else nullptr. See OperandCopies below.
};

// OperandCopies: with 16-bit operands each block writes, beside the float32 h (dq) it
// publishes, the same values rounded to the operand type into a two-slot buffer (h16, dq16),
// and the blocks stage the next step's operand from there: half the bytes read from L2 per
// step, and the same operands (the consumer used to round the float32 values itself). Two
// slots suffice: a block writes slot (t + 1) % 2 only after every block it reads from, and so
// every block that reads what it writes, has finished step t - 1, the last to read that slot.

//! Dynamic shared memory (bytes) one block of the forward or the backward needs.
std::size_t forward_smem_bytes(int kind, int D, const Tiling& tiling);
std::size_t backward_smem_bytes(int kind, int D, const Tiling& tiling);

//! Launch the persistent loops on `stream`; return nullptr or a message saying what failed
//! (a CUDA error, or a tiling whose blocks cannot all be resident).
const char* launch_forward(const ForwardArgs& args, const Tiling& tiling, cudaStream_t stream);
const char* launch_backward(const BackwardArgs& args, const Tiling& tiling, cudaStream_t stream);

}  // namespace rnnkit_cuda
