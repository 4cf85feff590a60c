// Native CPU selective scan (Mamba-1's recurrence) with a backward by recomputation.
//
// Per batch row b, step t, channel d and state index n:
//   h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] x_t[d] B_t[n]
//   y_t[d]    = sum_n C_t[n] h_t[d, n] + D[d] x_t[d]
// with h_{t-1} replaced by 0 entering every step whose reset is set.
//
// Two ops, registered as torch.ops.rnnkit_selective_cpp.* (no pybind11; the library is loaded
// with torch.ops.load_library by rnnkit.kernels.native):
//
//   forward(x, dt, At, B, C, D, h0, resets, chunk, save) -> (y, h_last, checkpoints)
//   backward(x, dt, At, B, C, D, resets, checkpoints, dy, dh_last, chunk)
//       -> (dx, ddt, dA, dB, dC, dD, dh0)   (dA: (D, N), like A)
//
// Shapes: x, dt, y: (B, T, D); B, C: (B, T, N); At: (N, D) (A transposed, so that a state
// index's decays are contiguous over the channels); D: (D,); h0, h_last: (B, D, N); resets:
// bool (B, T) or absent; checkpoints: (B, ceil(T / chunk), D, N), the state entering steps
// 0, chunk, 2 chunk, ... (before that step's reset); empty unless save.
//
// Work is split into units of (batch row, block of channels), run in parallel with
// at::parallel_for. Inside a unit the channels go in SIMD vectors (8 floats or 4 doubles, GCC's
// generic vectors) and every loop runs over a vector's N state entries, so a vector's (N, lanes)
// state, decays and adjoints are a few KiB of stack that stay in L1. Time is cut into tiles of
// steps: each vector of the block walks a tile before the next vector starts, so the rows of
// x, dt, y, B and C a tile reads stay in L1 for all the vectors of the block. The (B, T, D, N)
// states never exist in memory.
//
// The backward walks the chunks from last to first; per chunk and vector it recomputes the
// chunk's states entering each step and their decays exp(dt A) from the checkpoint (into
// (chunk, N) vectors of stack), then runs the adjoint recurrence
//   g_t = dL/dh_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}   (zero across a reset)
// backwards through it. The extra memory is the checkpoints, O(B D N T / chunk), plus per-unit
// buffers. The gradients of B and C sum over channels, those of A and D over batch rows: a unit
// adds its vectors' terms lane-wise per (step, n) over the chunk, sums the lanes once per
// chunk, and writes its own partial sums (per block of channels, per batch row), which torch
// adds up (no atomics, deterministic).
//
// SIMD: no -march flag (the cached library must run on any x86-64 CPU); the unit functions are
// compiled twice with GCC's target_clones (x86-64-v3: AVX2 + FMA, and the SSE2 baseline), the
// generic vectors lowered to each one's registers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <new>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#if !defined(__GNUC__)
#error "rnnkit_selective_cpp needs GCC or Clang (generic vectors, vector_size)"
#endif

#if defined(__x86_64__) && !defined(__clang__)
#define RNNKIT_SEL_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define RNNKIT_SEL_CLONES
#endif

#define RNNKIT_SEL_INLINE inline __attribute__((always_inline))

// The vector helpers below are always inlined into the cloned unit functions, so no 32-byte
// vector crosses a call: GCC's note that their ABI depends on AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rnnkit_selective {

// One SIMD vector of a dtype: 32 bytes (an AVX2 register; two SSE2 registers in the baseline
// clone). Lane l of a unit's vector v is channel d0 + v L + l.
template <typename T>
struct Simd;

template <>
struct Simd<float> {
  static constexpr int L = 8;
  static constexpr float kRateScale = 1.44269504088896341f;  // log2(e): decay_ is 2^y
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
};

template <>
struct Simd<double> {
  static constexpr int L = 4;
  static constexpr double kRateScale = 1.0;  // decay_ is exp
  typedef double V __attribute__((vector_size(32)));
};

// The bits of a vector as another vector type of the same size.
template <typename To, typename From>
RNNKIT_SEL_INLINE To reinterpret_bits(From v) {
  static_assert(sizeof(To) == sizeof(From));
  To out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

// The decays exp(dt A) come from the rates A scaled by Simd<T>::kRateScale (log2(e) for float,
// 1 for double, set once per unit): decay_(dt * scaled A) = exp(dt A). Its last rounding is
// that of the product dt * (scaled A), as in the plain loop's exp(dt * A).

// 2^y for 8 floats as plain arithmetic (so that it vectorises): 2^y = 2^k 2^f, k = round(y),
// |f| <= 1/2, 2^f by a degree-6 polynomial fitted for relative error on that range (below 2e-9
// in exact arithmetic, under float's rounding). k is rounded by adding 1.5 2^23 (plus the
// exponent bias 127, so that the sum's low bits are k + 127, shifted into the exponent field
// of 2^k). y is first clamped to [-126, 127.4] (2^y from the smallest normal float to 1.9e38;
// outside that range the result is the bound's) with selects that keep NaN, so NaN stays NaN.
RNNKIT_SEL_INLINE Simd<float>::V decay_(Simd<float>::V y) {
  using V = Simd<float>::V;
  using I = Simd<float>::I;
  constexpr float magic = 12582912.0f + 127.0f;
  y = y < -126.0f ? V{} - 126.0f : y;  // false for NaN
  y = y > 127.4f ? V{} + 127.4f : y;
  const V t = y + magic;
  const V f = y - (t - magic);
  V p = f * 0.00015353362f + 0.00133988739f;
  p = p * f + 0.00961843692f;
  p = p * f + 0.0555033237f;
  p = p * f + 0.240226477f;
  p = p * f + 0.693147182f;
  p = p * f + 1.0f;
  return p * reinterpret_bits<V>(reinterpret_bits<I>(t) << 23);
}

// float64 keeps the library's exp, lane by lane.
RNNKIT_SEL_INLINE Simd<double>::V decay_(Simd<double>::V x) {
  Simd<double>::V e;
  for (int l = 0; l < Simd<double>::L; ++l) e[l] = std::exp(x[l]);
  return e;
}

// Loads and stores of a vector's n <= L valid lanes (a block's last vector may be partial; its
// other lanes read as 0, so that their decays are 1 and their inputs 0).
template <typename T>
RNNKIT_SEL_INLINE typename Simd<T>::V load(const T* p, int n) {
  typename Simd<T>::V v = {};
  if (n == Simd<T>::L)
    std::memcpy(&v, p, sizeof v);  // one unaligned load
  else
    for (int l = 0; l < n; ++l) v[l] = p[l];
  return v;
}

template <typename T>
RNNKIT_SEL_INLINE void store(T* p, typename Simd<T>::V v, int n) {
  if (n == Simd<T>::L)
    std::memcpy(p, &v, sizeof v);
  else
    for (int l = 0; l < n; ++l) p[l] = v[l];
}

template <typename T>
RNNKIT_SEL_INLINE T lane_sum(typename Simd<T>::V v) {
  T s = T(0);
  for (int l = 0; l < Simd<T>::L; ++l) s += v[l];
  return s;
}

// A zeroed array of n vectors of a dtype, 64-byte aligned. (A std::vector of them would not
// be: GCC drops the vector type's alignment when the type is a template argument.)
template <typename T>
class Vectors {
 public:
  using V = typename Simd<T>::V;
  explicit Vectors(int64_t n)
      : data_(static_cast<V*>(::operator new(static_cast<size_t>(std::max<int64_t>(n, 1)) *
                                                 sizeof(V),
                                             std::align_val_t{64}))) {
    std::memset(static_cast<void*>(data_), 0, static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(V));
  }
  ~Vectors() { ::operator delete(static_cast<void*>(data_), std::align_val_t{64}); }
  Vectors(const Vectors&) = delete;
  Vectors& operator=(const Vectors&) = delete;
  V* data() { return data_; }
  const V* data() const { return data_; }
  V& operator[](int64_t i) { return data_[i]; }

 private:
  V* data_;
};

// The arguments of one unit: batch row b, channels [d0, d0 + w), block index blk.
struct Unit {
  int64_t b, d0, w, blk;
};

template <typename T>
struct Problem {
  int64_t batch, time, dim, nstate, chunk;
  const T* x;    // (B, T, D)
  const T* dt;   // (B, T, D)
  const T* At;   // (N, D)
  const T* Bm;   // (B, T, N)
  const T* Cm;   // (B, T, N)
  const T* Dv;   // (D,)
  const bool* resets;  // (B, T) or null
};

// Steps per tile of the forward: the block's vectors walk one tile after the other, each
// reading the lines of the tile's rows that the one before it touched.
constexpr int64_t kTile = 16;

// Requests the cache lines of rows [t0, t1) of a (B, T, D) tensor's channels [d0, d0 + w) of
// batch row b into L2. A unit reads a row's channels of its block with a stride of D between
// steps, which leaves a new page every few steps, where the hardware prefetchers stop.
template <typename T>
RNNKIT_SEL_INLINE void prefetch_rows(const T* base, int64_t b, int64_t t0, int64_t t1, int64_t T_,
                                     int64_t D, int64_t d0, int64_t w) {
  for (int64_t t = t0; t < t1; ++t) {
    const T* row = base + (b * T_ + t) * D + d0;
    for (int64_t j = 0; j < w; j += 64 / static_cast<int64_t>(sizeof(T)))
      __builtin_prefetch(row + j, 0, 2);
  }
}

// A unit's per-vector decay rates A[d, n] kRateScale (N vectors per channel vector), padded
// with zeros.
template <typename T>
RNNKIT_SEL_INLINE void unit_rates(Vectors<T>& rates, const Problem<T>& p, const Unit& u) {
  constexpr int L = Simd<T>::L;
  const int64_t N = p.nstate, nv = (u.w + L - 1) / L;
  for (int64_t v = 0; v < nv; ++v) {
    const int n_l = static_cast<int>(std::min<int64_t>(L, u.w - v * L));
    for (int64_t n = 0; n < N; ++n)
      rates[v * N + n] = load(p.At + n * p.dim + u.d0 + v * L, n_l) * Simd<T>::kRateScale;
  }
}

// A vector's state (N vectors) from / to the (D, N) layout of h0, h_last and the checkpoints
// (src and dst point at channel d0 + v L of one batch row).
template <typename T>
RNNKIT_SEL_INLINE void gather_state(typename Simd<T>::V* h, const T* src, int64_t N, int n_l) {
  for (int64_t n = 0; n < N; ++n) {
    typename Simd<T>::V hv = {};
    for (int l = 0; l < n_l; ++l) hv[l] = src[l * N + n];
    h[n] = hv;
  }
}

template <typename T>
RNNKIT_SEL_INLINE void scatter_state(T* dst, const typename Simd<T>::V* h, int64_t N, int n_l) {
  for (int l = 0; l < n_l; ++l)
    for (int64_t n = 0; n < N; ++n) dst[l * N + n] = h[n][l];
}

// ---- forward over one unit ---------------------------------------------------------------
// h0, h_last: (B, D, N); ck: checkpoints (B, nck, D, N) or null.
template <typename T>
RNNKIT_SEL_INLINE void forward_unit(const Problem<T>& p, const Unit& u, const T* h0, T* y,
                                    T* h_last, T* ck) {
  using V = typename Simd<T>::V;
  constexpr int L = Simd<T>::L;
  const int64_t N = p.nstate, D = p.dim, T_ = p.time, K = p.chunk;
  const int64_t nv = (u.w + L - 1) / L, nck = (T_ + K - 1) / K;
  Vectors<T> rates(nv * N), states(nv * N), skips(nv);
  unit_rates(rates, p, u);
  const T* state0 = h0 + (u.b * D + u.d0) * N;
  for (int64_t v = 0; v < nv; ++v) {
    const int n_l = static_cast<int>(std::min<int64_t>(L, u.w - v * L));
    gather_state(states.data() + v * N, state0 + v * L * N, N, n_l);
    skips[v] = load(p.Dv + u.d0 + v * L, n_l);
  }
  const bool* resets = p.resets != nullptr ? p.resets + u.b * T_ : nullptr;
  for (int64_t t0 = 0; t0 < T_; t0 += kTile) {
    const int64_t t1 = std::min(T_, t0 + kTile);
    // the next tile's inputs and outputs, while this one runs
    const int64_t t2 = std::min(T_, t1 + kTile);
    prefetch_rows(p.x, u.b, t1, t2, T_, D, u.d0, u.w);
    prefetch_rows(p.dt, u.b, t1, t2, T_, D, u.d0, u.w);
    prefetch_rows<T>(y, u.b, t1, t2, T_, D, u.d0, u.w);
    for (int64_t v = 0; v < nv; ++v) {
      const int n_l = static_cast<int>(std::min<int64_t>(L, u.w - v * L));
      V* __restrict__ h = states.data() + v * N;
      const V* __restrict__ A = rates.data() + v * N;
      const V skip = skips[v];
      // the first checkpoint at or after t0
      int64_t next_ck = ck != nullptr ? (t0 + K - 1) / K * K : T_;
      for (int64_t t = t0; t < t1; ++t) {
        if (t == next_ck) {
          scatter_state(ck + ((u.b * nck + t / K) * D + u.d0 + v * L) * N, h, N, n_l);
          next_ck += K;
        }
        if (resets != nullptr && resets[t])
          for (int64_t n = 0; n < N; ++n) h[n] = V{};
        const int64_t row = (u.b * T_ + t) * D + u.d0 + v * L;
        const V dt = load(p.dt + row, n_l), xv = load(p.x + row, n_l);
        const V dtx = dt * xv;
        const T* __restrict__ Bt = p.Bm + (u.b * T_ + t) * N;
        const T* __restrict__ Ct = p.Cm + (u.b * T_ + t) * N;
        V acc = skip * xv;
        for (int64_t n = 0; n < N; ++n) {
          const V hn = decay_(dt * A[n]) * h[n] + dtx * Bt[n];
          h[n] = hn;
          acc += hn * Ct[n];
        }
        store(y + row, acc, n_l);
      }
    }
  }
  T* last = h_last + (u.b * D + u.d0) * N;
  for (int64_t v = 0; v < nv; ++v) {
    const int n_l = static_cast<int>(std::min<int64_t>(L, u.w - v * L));
    scatter_state(last + v * L * N, states.data() + v * N, N, n_l);
  }
}

// ---- backward over one unit ----------------------------------------------------------------
// Outputs: dx, ddt (B, T, D); dA_part (B, D, N); dB_part, dC_part (B, blocks, T, N);
// dD_part (B, D); dh0 (B, D, N).
template <typename T>
struct Grads {
  const T* ck;
  const T* dy;
  const T* dh_last;
  T* dx;
  T* ddt;
  T* dA_part;
  T* dB_part;
  T* dC_part;
  T* dD_part;
  T* dh0;
  int64_t blocks;
};

template <typename T>
RNNKIT_SEL_INLINE void backward_unit(const Problem<T>& p, const Unit& u, const Grads<T>& g_) {
  using V = typename Simd<T>::V;
  constexpr int L = Simd<T>::L;
  const int64_t N = p.nstate, D = p.dim, T_ = p.time, K = p.chunk;
  const int64_t nv = (u.w + L - 1) / L, nck = (T_ + K - 1) / K;
  Vectors<T> rates(nv * N);
  unit_rates(rates, p, u);
  // per vector, kept over the chunks: dL/dh (g), the sums of the gradients of A and D
  Vectors<T> adj(nv * N), dA(nv * N), dD(nv);
  // per chunk: the states entering its steps and their decays (one vector at a time), and
  // the lane-wise sums of the gradients of B and C over the unit's vectors
  Vectors<T> hs(K * N), as(K * N), dBs(K * N), dCs(K * N), h(N);
  const T* adj0 = g_.dh_last + (u.b * D + u.d0) * N;
  for (int64_t v = 0; v < nv; ++v) {
    const int n_l = static_cast<int>(std::min<int64_t>(L, u.w - v * L));
    gather_state(adj.data() + v * N, adj0 + v * L * N, N, n_l);
  }
  const bool* resets = p.resets != nullptr ? p.resets + u.b * T_ : nullptr;
  T* dBr = g_.dB_part + (u.b * g_.blocks + u.blk) * T_ * N;
  T* dCr = g_.dC_part + (u.b * g_.blocks + u.blk) * T_ * N;
  for (int64_t c = nck - 1; c >= 0; --c) {
    const int64_t t0 = c * K, steps = std::min(K, T_ - t0);
    // the rows of the chunk before this one, while this one runs
    const int64_t t_prev = std::max<int64_t>(0, t0 - K);
    for (const T* base : {p.x, p.dt, g_.dy, static_cast<const T*>(g_.dx),
                          static_cast<const T*>(g_.ddt)})
      prefetch_rows(base, u.b, t_prev, t0, T_, D, u.d0, u.w);
    std::fill(dBs.data(), dBs.data() + steps * N, V{});
    std::fill(dCs.data(), dCs.data() + steps * N, V{});
    for (int64_t v = 0; v < nv; ++v) {
      const int n_l = static_cast<int>(std::min<int64_t>(L, u.w - v * L));
      const V* __restrict__ A = rates.data() + v * N;
      V* __restrict__ hv = h.data();
      V* __restrict__ hsv = hs.data();
      V* __restrict__ asv = as.data();
      gather_state(hv, g_.ck + ((u.b * nck + c) * D + u.d0 + v * L) * N, N, n_l);
      // the chunk's states entering each step (after its reset) and decays
      for (int64_t s = 0; s < steps; ++s) {
        const int64_t t = t0 + s;
        if (resets != nullptr && resets[t])
          for (int64_t n = 0; n < N; ++n) hv[n] = V{};
        const int64_t row = (u.b * T_ + t) * D + u.d0 + v * L;
        const V dt = load(p.dt + row, n_l);
        const V dtx = dt * load(p.x + row, n_l);
        const T* __restrict__ Bt = p.Bm + (u.b * T_ + t) * N;
        for (int64_t n = 0; n < N; ++n) {
          const V a = decay_(dt * A[n]);
          hsv[s * N + n] = hv[n];
          asv[s * N + n] = a;
          hv[n] = a * hv[n] + dtx * Bt[n];
        }
      }
      // the adjoint recurrence backwards through the chunk
      V* __restrict__ gv = adj.data() + v * N;
      V* __restrict__ dAv = dA.data() + v * N;
      V* __restrict__ dBv = dBs.data();
      V* __restrict__ dCv = dCs.data();
      const V skip = load(p.Dv + u.d0 + v * L, n_l);
      V dDv = dD[v];
      for (int64_t s = steps - 1; s >= 0; --s) {
        const int64_t t = t0 + s;
        const int64_t row = (u.b * T_ + t) * D + u.d0 + v * L;
        const V dt = load(p.dt + row, n_l), xv = load(p.x + row, n_l);
        const V dyv = load(g_.dy + row, n_l);
        const V dtx = dt * xv;
        const T* __restrict__ Bt = p.Bm + (u.b * T_ + t) * N;
        const T* __restrict__ Ct = p.Cm + (u.b * T_ + t) * N;
        dDv += dyv * xv;
        // sum_n dL/dh_t B_t[n], and sum_n dL/dh_t A exp(dt A) h_{t-1} kRateScale
        V gB = {}, gAh = {};
        for (int64_t n = 0; n < N; ++n) {
          const V gn = gv[n] + dyv * Ct[n];  // dL/dh_t
          const V a = asv[s * N + n];
          const V ah = a * hsv[s * N + n];
          dCv[s * N + n] += (ah + dtx * Bt[n]) * dyv;  // h_t dy_t
          dBv[s * N + n] += gn * dtx;
          const V q = gn * ah;
          dAv[n] += q * dt;
          gAh += q * A[n];
          gB += gn * Bt[n];
          gv[n] = a * gn;  // dL/dh_{t-1}
        }
        if (resets != nullptr && resets[t])
          for (int64_t n = 0; n < N; ++n) gv[n] = V{};
        store(g_.dx + row, skip * dyv + dt * gB, n_l);
        store(g_.ddt + row, gAh * (T(1) / Simd<T>::kRateScale) + xv * gB, n_l);
      }
      dD[v] = dDv;
    }
    for (int64_t s = 0; s < steps; ++s)
      for (int64_t n = 0; n < N; ++n) {
        dBr[(t0 + s) * N + n] = lane_sum<T>(dBs[s * N + n]);
        dCr[(t0 + s) * N + n] = lane_sum<T>(dCs[s * N + n]);
      }
  }
  T* dh0 = g_.dh0 + (u.b * D + u.d0) * N;
  T* dA_out = g_.dA_part + (u.b * D + u.d0) * N;
  for (int64_t v = 0; v < nv; ++v) {
    const int n_l = static_cast<int>(std::min<int64_t>(L, u.w - v * L));
    scatter_state(dh0 + v * L * N, adj.data() + v * N, N, n_l);
    scatter_state(dA_out + v * L * N, dA.data() + v * N, N, n_l);
    store(g_.dD_part + u.b * D + u.d0 + v * L, dD[v], n_l);
  }
}

}  // namespace rnnkit_selective

// ---- the kernels, compiled for two instruction sets ----------------------------------------
namespace rnnkit_selective {

#define RNNKIT_SEL_DEFINE(T)                                                                    \
  RNNKIT_SEL_CLONES void forward_group(const Problem<T>& p, const Unit& u, const T* h0, T* y,   \
                                       T* h_last, T* ck) {                                       \
    forward_unit<T>(p, u, h0, y, h_last, ck);                                                   \
  }                                                                                             \
  RNNKIT_SEL_CLONES void backward_group(const Problem<T>& p, const Unit& u, const Grads<T>& g) { \
    backward_unit<T>(p, u, g);                                                                  \
  }

RNNKIT_SEL_DEFINE(float)
RNNKIT_SEL_DEFINE(double)
#undef RNNKIT_SEL_DEFINE

}  // namespace rnnkit_selective

namespace {

using rnnkit_selective::Grads;
using rnnkit_selective::Problem;
using rnnkit_selective::Unit;

// How the (batch row, channel block) units are cut: split the channels until every thread
// has two units, never below 8 channels (one AVX2 vector of floats), at most 512 channels. Wide
// blocks read long runs of each (B, T, D) row (2 KiB at 512 float channels) and leave fewer
// partial sums of the gradients of B and C to add up; a unit's state, rates and adjoints take
// 2 N w numbers each, in L2.
struct Plan {
  int64_t block, blocks, units, grain;
};

Plan make_plan(int64_t batch, int64_t time, int64_t dim, int64_t nstate) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t block = std::min<int64_t>(std::max<int64_t>(dim, 1), 512);
  auto units = [&](int64_t blk) { return batch * ((dim + blk - 1) / blk); };
  // halves, rounded up to whole vectors of 8 channels
  while (units(block) < 2 * threads && block > 8)
    block = std::max<int64_t>(8, ((block + 1) / 2 + 7) / 8 * 8);
  Plan plan;
  plan.block = block;
  plan.blocks = std::max<int64_t>(1, (dim + block - 1) / block);
  plan.units = batch * plan.blocks;
  // below ~64 Ki state updates a thread hand-off costs more than the work
  const bool small = batch * time * dim * nstate < (int64_t{1} << 16);
  plan.grain = small ? std::max<int64_t>(1, plan.units) : 1;
  return plan;
}

void check_input(const at::Tensor& ref, const at::Tensor& t, const char* name,
                 at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), "rnnkit_selective_cpp: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "rnnkit_selective_cpp: ", name,
              " has dtype ", t.scalar_type(), ", expected ", ref.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "rnnkit_selective_cpp: ", name, " has shape ", t.sizes(),
              ", expected ", shape);
  TORCH_CHECK(t.is_contiguous(), "rnnkit_selective_cpp: ", name, " must be contiguous");
}

struct Dims {
  int64_t batch, time, dim, nstate;
};

Dims check_common(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& At,
                  const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                  const std::optional<at::Tensor>& resets, int64_t chunk) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "rnnkit_selective_cpp: float32 or float64 expected, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 3, "rnnkit_selective_cpp: x must be (B, T, D), got ", x.sizes());
  TORCH_CHECK(At.dim() == 2, "rnnkit_selective_cpp: At must be (N, D), got ", At.sizes());
  TORCH_CHECK(chunk > 0, "rnnkit_selective_cpp: chunk must be positive, got ", chunk);
  const Dims d{x.size(0), x.size(1), x.size(2), At.size(0)};
  check_input(x, x, "x", {d.batch, d.time, d.dim});
  check_input(x, dt, "dt", {d.batch, d.time, d.dim});
  check_input(x, At, "At", {d.nstate, d.dim});
  check_input(x, B, "B", {d.batch, d.time, d.nstate});
  check_input(x, C, "C", {d.batch, d.time, d.nstate});
  check_input(x, D, "D", {d.dim});
  if (resets.has_value()) {
    TORCH_CHECK(resets->scalar_type() == at::kBool, "rnnkit_selective_cpp: resets must be bool");
    TORCH_CHECK(resets->sizes() == at::IntArrayRef({d.batch, d.time}) && resets->is_contiguous(),
                "rnnkit_selective_cpp: resets must be contiguous (B, T), got ", resets->sizes());
  }
  return d;
}

template <typename T>
Problem<T> problem(const Dims& d, int64_t chunk, const at::Tensor& x, const at::Tensor& dt,
                   const at::Tensor& At, const at::Tensor& B, const at::Tensor& C,
                   const at::Tensor& D, const std::optional<at::Tensor>& resets) {
  return Problem<T>{d.batch,
                    d.time,
                    d.dim,
                    d.nstate,
                    chunk,
                    x.data_ptr<T>(),
                    dt.data_ptr<T>(),
                    At.data_ptr<T>(),
                    B.data_ptr<T>(),
                    C.data_ptr<T>(),
                    D.data_ptr<T>(),
                    resets.has_value() ? resets->data_ptr<bool>() : nullptr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_op(
    const at::Tensor& x, const at::Tensor& dt, const at::Tensor& At, const at::Tensor& B,
    const at::Tensor& C, const at::Tensor& D, const at::Tensor& h0,
    const std::optional<at::Tensor>& resets, int64_t chunk, bool save) {
  const Dims d = check_common(x, dt, At, B, C, D, resets, chunk);
  check_input(x, h0, "h0", {d.batch, d.dim, d.nstate});
  const int64_t nck = save ? (d.time + chunk - 1) / chunk : 0;
  at::Tensor y = at::empty({d.batch, d.time, d.dim}, x.options());
  at::Tensor h_last = at::empty({d.batch, d.dim, d.nstate}, x.options());
  at::Tensor ck = at::empty({save ? d.batch : 0, nck, d.dim, d.nstate}, x.options());
  if (d.batch == 0) return {y, h_last, ck};
  if (d.time == 0 || d.dim == 0) {
    h_last.copy_(h0);
    return {y, h_last, ck};
  }
  const Plan plan = make_plan(d.batch, d.time, d.dim, d.nstate);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_selective_forward", [&] {
    const Problem<scalar_t> p = problem<scalar_t>(d, chunk, x, dt, At, B, C, D, resets);
    const scalar_t* h0p = h0.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* hl = h_last.data_ptr<scalar_t>();
    scalar_t* ckp = save ? ck.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, plan.units, plan.grain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t blk = i % plan.blocks, d0 = blk * plan.block;
        const Unit u{i / plan.blocks, d0, std::min(plan.block, d.dim - d0), blk};
        rnnkit_selective::forward_group(p, u, h0p, yp, hl, ckp);
      }
    });
  });
  return {y, h_last, ck};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
backward_op(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& At, const at::Tensor& B,
            const at::Tensor& C, const at::Tensor& D, const std::optional<at::Tensor>& resets,
            const at::Tensor& ck, const at::Tensor& dy, const at::Tensor& dh_last,
            int64_t chunk) {
  const Dims d = check_common(x, dt, At, B, C, D, resets, chunk);
  const int64_t nck = (d.time + chunk - 1) / chunk;
  check_input(x, dy, "dy", {d.batch, d.time, d.dim});
  check_input(x, dh_last, "dh_last", {d.batch, d.dim, d.nstate});
  at::Tensor dx = at::empty_like(x);
  at::Tensor ddt = at::empty_like(x);
  at::Tensor dh0 = at::empty({d.batch, d.dim, d.nstate}, x.options());
  if (d.batch == 0 || d.time == 0 || d.dim == 0) {
    dh0.copy_(dh_last);
    dx.zero_();
    ddt.zero_();
    return {dx,
            ddt,
            at::zeros({d.dim, d.nstate}, x.options()),
            at::zeros_like(B),
            at::zeros_like(C),
            at::zeros_like(D),
            dh0};
  }
  check_input(x, ck, "checkpoints", {d.batch, nck, d.dim, d.nstate});
  const Plan plan = make_plan(d.batch, d.time, d.dim, d.nstate);
  at::Tensor dA_part = at::empty({d.batch, d.dim, d.nstate}, x.options());
  at::Tensor dB_part = at::empty({d.batch, plan.blocks, d.time, d.nstate}, x.options());
  at::Tensor dC_part = at::empty({d.batch, plan.blocks, d.time, d.nstate}, x.options());
  at::Tensor dD_part = at::empty({d.batch, d.dim}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_selective_backward", [&] {
    const Problem<scalar_t> p = problem<scalar_t>(d, chunk, x, dt, At, B, C, D, resets);
    const Grads<scalar_t> g{ck.data_ptr<scalar_t>(),      dy.data_ptr<scalar_t>(),
                            dh_last.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                            ddt.data_ptr<scalar_t>(),     dA_part.data_ptr<scalar_t>(),
                            dB_part.data_ptr<scalar_t>(), dC_part.data_ptr<scalar_t>(),
                            dD_part.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>(),
                            plan.blocks};
    at::parallel_for(0, plan.units, plan.grain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t blk = i % plan.blocks, d0 = blk * plan.block;
        const Unit u{i / plan.blocks, d0, std::min(plan.block, d.dim - d0), blk};
        rnnkit_selective::backward_group(p, u, g);
      }
    });
  });
  // the partial sums add up over batch rows (dA: (D, N), dD) and channel blocks (dB, dC)
  return {dx,
          ddt,
          dA_part.sum(0),
          plan.blocks == 1 ? dB_part.squeeze(1) : dB_part.sum(1),
          plan.blocks == 1 ? dC_part.squeeze(1) : dC_part.sum(1),
          dD_part.sum(0),
          dh0};
}

std::string simd_variant() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3 (AVX2, FMA)" : "x86-64 baseline";
#else
  return "compiler default";
#endif
}

}  // namespace

// The schemas, then the CPU kernels (the fake kernels for torch.compile are registered from
// Python, rnnkit/kernels/selective/cpp/_fake.py).
TORCH_LIBRARY(rnnkit_selective_cpp, m) {
  m.def(
      "forward(Tensor x, Tensor dt, Tensor At, Tensor B, Tensor C, Tensor D, Tensor h0, "
      "Tensor? resets, int chunk, bool save) -> (Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor x, Tensor dt, Tensor At, Tensor B, Tensor C, Tensor D, Tensor? resets, "
      "Tensor checkpoints, Tensor dy, Tensor dh_last, int chunk) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("simd_variant() -> str", &simd_variant);
}

TORCH_LIBRARY_IMPL(rnnkit_selective_cpp, CPU, m) {
  m.impl("forward", &forward_op);
  m.impl("backward", &backward_op);
}
