// Time loops of the gated cells on raw CPU buffers (no torch headers: this translation unit
// compiles in a few seconds, in parallel with the torch glue).
//
// Layouts are those of the Python `fused` loops (rnnkit/kernels/gated/fused/_common.py), all
// contiguous, head-major and time-major:
//   px (N, T, B, G*D): projected input; W (N, D, G*D): recurrent weights, one step is
//   gates = px_t + h_{t-1} W per head; states (N, B, D); per-step buffers (N, T or 1, B, ...).
// mask (T, B) bytes, nonzero where the state entering step t restarts from its init value
// (or null). With `save` false the per-step buffers hold one step and are reused.
#pragma once

#include <cstdint>
#include <vector>
#include <functional>

namespace rnnkit_cpu {

struct TileKernels;

// What the loops need from the host: products with the recurrent weights and a parallel-for.
template <typename T>
struct Env {
  // Products c (m x n) = a (m x k) @ op(w) with one head's weights w, fixed for a whole loop
  // (row-major; op(w) = w (k x n), or w^T with w (n x k) when `trans`; leading dimensions in
  // elements). `prepare` returns a handle (the host may pack w once there), `multiply` runs
  // one product, `release` frees the handle.
  void* (*prepare)(bool trans, int64_t m, int64_t n, int64_t k, const T* w, int64_t ldw);
  void (*multiply)(const void* handle, const T* a, int64_t lda, T* c, int64_t ldc);
  void (*release)(void* handle);
  // Runs f(begin, end) over [0, n) in chunks of at least `grain` items (serially if small).
  void (*parallel)(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f);
  // Elements of pointwise work below which one step stays on one thread.
  int64_t grain_elements;
  // Float loops: run as a team of up to `threads` threads with these register-tiled
  // products (gated_tiles.h) when not null and the head size is a multiple of their width;
  // otherwise (and for double) one Env::multiply per head and step.
  const TileKernels* tiles;
  int64_t threads;
};

struct Dims {
  int64_t N, T, B, D;
};

// Offset of row b of step t of head n in an (N, steps, B, width) buffer.
inline int64_t at(int64_t n, int64_t t, int64_t b, int64_t steps, int64_t B, int64_t width) {
  return ((n * steps + t) * B + b) * width;
}

// Whether row b restarts from its init state at step t.
inline bool reset_at(const uint8_t* mask, int64_t t, int64_t b, int64_t B) {
  return mask != nullptr && mask[t * B + b] != 0;
}

// ---- LSTM (gates i, f, g, o) -------------------------------------------------------------
template <typename T>
struct LstmForward {
  const T* px;              // (N, T, B, 4D)
  const T* W;               // (N, D, 4D)
  const uint8_t* mask;      // (T, B) or null
  T h_init, c_init;
  bool save;
  T* hs;                    // (N, T+1, B, D), slot 0 holds h0 on entry
  T* cs;                    // (N, T+1 or 2, B, D), slot 0 holds c0; c entering each step
                            // after resets, then c_T
  T* acts;                  // (N, T or 1, B, 4D): sigmoid i, f, tanh g, sigmoid o
  T* tcs;                   // (N, T or 1, B, D): tanh c_t
  T* hp;                    // (N, T or 1, B, D): h entering each step after resets; null
                            // without mask (then hs[:, t] is that state)
};

template <typename T>
struct LstmBackward {
  const T* W;
  const T* acts;            // (N, T, B, 4D)
  const T* cs;              // (N, T+1, B, D)
  const T* tcs;             // (N, T, B, D)
  const uint8_t* mask;
  const T* d_hs;            // (N, T+1, B, D): gradient of hs
  T* dq;                    // (N, T, B, 4D): gradient of the pre-activations (= of px)
  T* dc;                    // (N, B, D): in, gradient of c_T; out, of c_0
  T* dh0;                   // (N, B, D): gradient of h_0
  T* scratch;               // (N, B, D)
};

template <typename T>
void lstm_forward(const Env<T>& env, const Dims& d, const LstmForward<T>& a);
template <typename T>
void lstm_backward(const Env<T>& env, const Dims& d, const LstmBackward<T>& a);

// ---- GRU (gates r, z, n; q = h W + [0, 0, b_hn]) -------------------------------------------
template <typename T>
struct GruForward {
  const T* px;              // (N, T, B, 3D)
  const T* W;               // (N, D, 3D)
  const T* bhn;             // (N, D) or null
  const uint8_t* mask;
  T h_init;
  bool save;
  T* hs;                    // (N, T+1, B, D), slot 0 holds h0
  T* acts;                  // (N, T or 1, B, 3D): r, z, n
  T* qs;                    // (N, T or 1, B, 3D): recurrent terms q (with b_hn)
  T* hp;                    // (N, T or 1, B, D) or null without mask
};

template <typename T>
struct GruBackward {
  const T* W;
  const T* acts;            // (N, T, B, 3D)
  const T* qs;              // (N, T, B, 3D)
  const T* hp;              // (N, T, B, D) h entering each step: hp, or hs when no mask
  int64_t hp_step;          // elements between steps of hp (B D, or for hs also B D)
  int64_t hp_head;          // elements between heads of hp (T B D, or (T+1) B D for hs)
  const uint8_t* mask;
  const T* d_hs;            // (N, T+1, B, D)
  T* dq;                    // (N, T, B, 3D): gradient of q = [d r, d z, d q_n]
  T* dpx;                   // (N, T, B, 3D): gradient of px = [d r, d z, d n]
  T* dh0;                   // (N, B, D)
  T* dh;                    // (N, B, D) scratch: gradient of h_t
  T* scratch;               // (N, B, D)
};

template <typename T>
void gru_forward(const Env<T>& env, const Dims& d, const GruForward<T>& a);
template <typename T>
void gru_backward(const Env<T>& env, const Dims& d, const GruBackward<T>& a);

// ---- Elman (h = phi(px + h W), phi tanh or ReLU) ---------------------------------------------
template <typename T>
struct ElmanForward {
  const T* px;              // (N, T, B, D)
  const T* W;               // (N, D, D)
  const uint8_t* mask;
  T h_init;
  bool relu;
  T* hs;                    // (N, T+1, B, D), slot 0 holds h0
  T* hp;                    // (N, T, B, D) or null without mask
};

template <typename T>
struct ElmanBackward {
  const T* W;
  const T* hs;              // (N, T+1, B, D)
  const uint8_t* mask;
  bool relu;
  const T* d_hs;            // (N, T+1, B, D)
  T* dq;                    // (N, T, B, D)
  T* dh0;                   // (N, B, D)
  T* scratch;               // (N, B, D)
};

template <typename T>
void elman_forward(const Env<T>& env, const Dims& d, const ElmanForward<T>& a);
template <typename T>
void elman_backward(const Env<T>& env, const Dims& d, const ElmanBackward<T>& a);

// ---- sLSTM (xLSTM's stabilised exponential gating; gates i, f, z, o) -------------------------
template <typename T>
struct SlstmForward {
  const T* px;              // (N, T, B, 4D)
  const T* W;               // (N, D, 4D)
  const uint8_t* mask;
  T init_h, init_c, init_n, init_m;
  bool save;
  T* hs;                    // (N, T+1, B, D), slot 0 holds h0
  T* cn;                    // (N, T+1 or 2, B, 2, D): c, n leaving each step, slot 0 initial
  T* ms;                    // (N, T+1 or 2, B, D): m leaving each step, slot 0 initial
  T* gates;                 // (N, T or 1, B, 4D): i~, f~ (pre-activations), tanh z~, sigmoid o~
  T* ex;                    // (N, T or 1, B, 2, D): i', f'
  T* cnp;                   // (N, T or 1, B, 2, D): c, n entering each step after resets
                            // (null without mask: cn[:, t])
  T* hp;                    // (N, T or 1, B, D) or null without mask
  T* m_scratch;             // (N, B, D): m entering a step after resets (with mask)
};

template <typename T>
struct SlstmBackward {
  const T* W;
  const T* hs;              // (N, T+1, B, D)
  const T* cn;              // (N, T+1, B, 2, D)
  const T* ms;              // (N, T+1, B, D)
  const T* gates;           // (N, T, B, 4D)
  const T* ex;              // (N, T, B, 2, D)
  const T* cnp;             // c, n entering each step: cnp, or cn when no mask
  int64_t cnp_step, cnp_head;
  const uint8_t* mask;
  const T* d_hs;            // (N, T+1, B, D)
  T* dq;                    // (N, T, B, 4D)
  T* dc;                    // (N, B, D): in, gradient of c_T; out, of c_0
  T* dn;                    // (N, B, D): likewise for n
  T* dm;                    // (N, B, D): likewise for m
  T* dh0;                   // (N, B, D)
  T* scratch;               // (N, B, D)
};

template <typename T>
void slstm_forward(const Env<T>& env, const Dims& d, const SlstmForward<T>& a);
template <typename T>
void slstm_backward(const Env<T>& env, const Dims& d, const SlstmBackward<T>& a);

// How many time loops (forward or backward) ran as team loops since the library loaded.
int64_t team_loops_run();

// Phase timers of the float team loops, for profiling (off by default; a few clock reads per
// step when on). phase_times() returns the seconds summed over threads and loops since the
// last reset: [forward loops' kPhases phases..., reverse loops' ...], in the order below.
enum : int {
  kPhasePack = 0,       // packing the recurrent weights into panels
  kPhasePrefetch = 1,   // the step's preamble: prefetching the next step's data
  kPhaseProduct = 2,    // register-tiled products
  kPhasePointwise = 3,  // the row kernels (activations, state update, saved values)
  kPhaseBarrier = 4,    // waiting for the other threads at the end of a step
  kPhases = 5
};
void set_phase_timing(bool on);
std::vector<double> phase_times(bool reset);

// Which SIMD variant the pointwise loops run on this CPU ("x86-64-v3", "default", ...).
const char* simd_variant();

}  // namespace rnnkit_cpu
