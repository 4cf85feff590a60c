// Persistent CUDA time loops of the gated cells (Elman, LSTM, GRU): the launch interface.
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
// Gate orders are torch's: LSTM i, f, g, o; GRU r, z, n.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

namespace rnnkit_cuda {

enum CellKind : int { ELMAN_TANH = 0, ELMAN_RELU = 1, LSTM = 2, GRU = 3 };

//! Threads per block of every kernel here.
constexpr int kThreads = 256;

//! Gates per hidden unit of a cell kind (W has G*D columns per head).
inline int gates_of(int kind) { return kind == LSTM ? 4 : (kind == GRU ? 3 : 1); }

//! How the work is cut: each block owns `units` hidden units of one head (the last tile of a
//! head may be shorter) for the whole sequence and walks the batch in tiles of `batch_tile`
//! rows. blocks = N * ceil(D / units); every block must be resident at once (cooperative).
struct Tiling {
  int units;
  int batch_tile;
};

//! Forward loop. Buffers the caller does not want are nullptr.
struct ForwardArgs {
  int kind, N, T, B, D;
  const float* px;    // (N, T, B, G*D)
  const float* W;     // (N, D, G*D)
  const float* bhn;   // GRU: (N, D) bias of the candidate's recurrent term, or nullptr
  const bool* mask;   // (T, B) or nullptr
  float h_init;       // value h restarts from at a reset
  float c_init;       // value c restarts from at a reset (LSTM)
  int save;           // keep the per-step buffers the backward reads
  float* hs;          // (N, T+1, B, D), slot 0 filled by the caller
  float* cs;          // LSTM: (N, save ? T+1 : 2, B, D), slot 0 filled; c entering each step
                      //       after resets, then the final c (slot T, or T % 2 without save)
  float* acts;        // save: (N, T, B, G*D) gate activations (LSTM i f g o; GRU r z n)
  float* qs;          // GRU with save: (N, T, B, 3D) recurrent terms q = h W + [0, 0, b_hn]
  float* tcs;         // LSTM with save: (N, T, B, D) tanh(c_t)
  float* hp;          // save with resets: (N, T, B, D) h entering each step after resets
};

//! Reverse loop ("stored gates": it reads the buffers the forward saved, no recomputation).
struct BackwardArgs {
  int kind, N, T, B, D;
  const float* W;     // (N, D, G*D)
  const float* hs;    // (N, T+1, B, D) from the forward
  const float* acts;  // (N, T, B, G*D)   (LSTM, GRU)
  const float* cs;    // LSTM: (N, T+1, B, D)
  const float* tcs;   // LSTM: (N, T, B, D)
  const float* qs;    // GRU: (N, T, B, 3D)
  const float* hp;    // GRU: h entering each step, (N, T, B, D) (hs without resets)
  const bool* mask;   // (T, B) or nullptr
  const float* d_hs;  // (N, T+1, B, D) gradient reaching each slot of hs directly
  float* dq;          // (N, T, B, G*D) out: gradient of the recurrent product's output
  float* dpx;         // GRU: (N, T, B, 3D) out: gradient of px (differs from dq in gate n)
  float* dstate;      // LSTM: (N, B, D) in: gradient of the final c; out: that of c0
  float* carry;       // GRU: (N, B, D) scratch (dh_{t+1} z_{t+1} of each owned unit)
  float* dh0;         // (N, B, D) out: gradient of the initial h
};

//! Dynamic shared memory (bytes) one block of the forward or the backward needs.
std::size_t forward_smem_bytes(int kind, int D, const Tiling& tiling);
std::size_t backward_smem_bytes(int kind, int D, const Tiling& tiling);

//! Launch the persistent loops on `stream`; return nullptr or a message saying what failed
//! (a CUDA error, or a tiling whose blocks cannot all be resident).
const char* launch_forward(const ForwardArgs& args, const Tiling& tiling, cudaStream_t stream);
const char* launch_backward(const BackwardArgs& args, const Tiling& tiling, cudaStream_t stream);

}  // namespace rnnkit_cuda
